from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ruddervirt import proc, proxyconf


class Command(BaseCommand):
    help = (
        "Write the nginx site of deploy/nginx/ruddervirt.conf for this portal: HTTPS for the "
        "pages and the console WebSockets, plain HTTP redirected. With --self-signed, first "
        "make a self-signed certificate and key at --cert and --key (for a test or a first "
        "start; bring your own for real use)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--server-name", required=True, help="the portal's host name")
        parser.add_argument("--cert", required=True, type=Path, help="certificate chain (PEM)")
        parser.add_argument("--key", required=True, type=Path, help="its private key (PEM)")
        parser.add_argument("--self-signed", action="store_true", help="make --cert and --key")
        parser.add_argument("--upstream", default="127.0.0.1:8000", help="daphne's HOST:PORT")
        parser.add_argument("--https", default="443", help="HTTPS listen: PORT or ADDRESS:PORT")
        parser.add_argument("--http", default="80", help="HTTP (redirect) listen")
        parser.add_argument("--output", type=Path, help="write here instead of standard output")

    def handle(self, *args, **options):
        site = proxyconf.Site(
            server_name=options["server_name"],
            certificate=options["cert"],
            certificate_key=options["key"],
            upstream=options["upstream"],
            https_listen=options["https"],
            http_listen=options["http"],
        )
        try:
            text = proxyconf.render(site)
            if options["self_signed"]:
                if site.certificate.exists() or site.certificate_key.exists():
                    raise CommandError(
                        f"{site.certificate} or {site.certificate_key} exists: not replaced"
                    )
                proxyconf.self_signed(site.server_name, site.certificate, site.certificate_key)
                self.stderr.write(
                    f"self-signed certificate for {site.server_name}: {site.certificate}"
                )
        except proxyconf.ProxyConfigError as exc:
            raise CommandError(str(exc)) from exc
        except proc.ExternalCommandError as exc:
            raise CommandError(f"openssl failed: {exc}") from exc
        if options["output"]:
            options["output"].write_text(text)
            self.stderr.write(f"nginx site written to {options['output']}")
        else:
            self.stdout.write(text, ending="")
