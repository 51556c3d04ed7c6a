"""Totals per customer from an orders CSV file."""

import csv


def read_orders(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def totals_by_customer(orders):
    totals = {}
    for row in orders:
        amount = float(row["amount"])
        totals[row["customer"]] = totals.get(row["customer"], 0.0) + amount
    return totals


def top_customers(totals, n):
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
    return ranked[:n]


def write_report(totals, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer", "total"])
        for customer, total in sorted(totals.items()):
            writer.writerow([customer, f"{total:.2f}"])
    print("wrote", len(totals), "customers to", path)
