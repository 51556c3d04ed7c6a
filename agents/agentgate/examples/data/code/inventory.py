"""Stock levels for a small warehouse."""

import json


class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, sku, qty):
        if qty <= 0:
            raise ValueError("qty must be positive")
        self.items[sku] = self.items.get(sku, 0) + qty

    def remove(self, sku, qty):
        have = self.items.get(sku, 0)
        if qty > have:
            raise ValueError(f"only {have} of {sku} in stock")
        self.items[sku] = have - qty

    def get_qty(self, sku):
        return self.items.get(sku, 0)

    def low_stock(self, threshold):
        return sorted(sku for sku, qty in self.items.items() if qty < threshold)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.items, f)
        print("saved", len(self.items), "items to", path)

    def load(self, path):
        with open(path) as f:
            self.items = json.load(f)
        print("loaded", len(self.items), "items from", path)
