from typing import Any

from django.http import HttpRequest

from accounts.roles import is_admin, is_instructor, is_student


def roles(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    return {
        "is_admin": is_admin(user),
        "is_instructor": is_instructor(user),
        "is_student": is_student(user),
    }
