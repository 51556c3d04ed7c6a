"""A token bucket rate limiter."""

import time


class TokenBucket:
    def __init__(self, rate, capacity):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = time.monotonic()

    def refill(self):
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self, n=1):
        self.refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        print("rate limited: wanted", n, "have", self.tokens)
        return False

    def wait_time(self, n=1):
        self.refill()
        missing = n - self.tokens
        return max(missing / self.rate, 0.0)
