from tests.test_mirror_rows_review import stripe_account, add_billing, mirror_of, new_run, NOW, o, stripe_mirror  # noqa


def _named(obj, customer):
    return [obj["id"], customer.get("name") if customer else None]

def test_exp_invoice_form_customer(stripe_account):
    made = add_billing(stripe_account, n=5)
    m = mirror_of(stripe_account)
    form = stripe_mirror.RowForm("review.named.1", _named, expands_customer=True)
    ask = dict(fields=("id", "customer"), expand_customer=True, customer_fields=("id", "name"))
    for kind in ("charge", "invoice"):
        first = list(m.listing(kind, **ask, form=form))
        print(first[:2])
    customer = stripe_account.state["objects"]["customer"][0]
    renamed = {**customer, "name": "Renamed"}
    stripe_account.change(o.make_event("customer.updated", renamed, created=NOW - 5), replace={renamed["id"]: renamed})
    new_run(m)
    for kind in ("charge", "invoice"):
        objs = list(m.listing(kind, **ask))
        rows = list(m.listing(kind, **ask, form=form))
        print(kind, [(x["id"], x["customer"]["name"]) for x in objs if x["customer"]["id"] == customer["id"]],
              [r for r in rows if r[0] in {x["id"] for x in objs if x["customer"]["id"] == customer["id"]}])
