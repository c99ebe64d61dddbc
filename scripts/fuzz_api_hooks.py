"""schemathesis hooks for scripts/fuzz-api.

The one rule of the API that JSON Schema cannot state: atom names are
unique within a dataset (a schema can only require whole array items to
differ). Generated add_dataset bodies that repeat an atom name are dropped
here, so that every request the fuzz sends is one the server must accept.
"""

import schemathesis


@schemathesis.hook
def filter_body(context, body):
    dataset = body.get("dataset") if isinstance(body, dict) else None
    if not isinstance(dataset, dict):
        return True
    names = [a.get("name") for a in dataset.get("atoms", []) if isinstance(a, dict)]
    return len(names) == len(set(names))
