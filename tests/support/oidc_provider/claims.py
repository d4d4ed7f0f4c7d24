"""What the test provider says about a person: standard claims and a ``groups`` claim."""


def userinfo(claims, user):
    claims["preferred_username"] = user.username
    claims["email"] = user.email
    claims["given_name"] = user.first_name
    claims["family_name"] = user.last_name
    return claims


def groups_in_id_token(id_token, user, **kwargs):
    id_token["groups"] = sorted(user.groups.values_list("name", flat=True))
    return id_token
