from changes_app.definitions import Change


class NewCheckoutForStaff(Change):
    """Staff accounts see the new checkout first: a code change using the Redis client."""

    id = "shop-flag-new-checkout-staff"
    author = "growth-team"
    target = "feature-flags"

    def apply(self, redis, context):
        added = redis.sadd("shop:flag:new-checkout:allow", "group:staff")
        context.log.info("staff allowed on the new checkout (%s added)", added)

    def rollback(self, redis):
        redis.srem("shop:flag:new-checkout:allow", "group:staff")

    def verify(self, redis) -> bool:
        return bool(redis.sismember("shop:flag:new-checkout:allow", "group:staff"))
