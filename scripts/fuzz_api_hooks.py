"""schemathesis hooks for scripts/fuzz-api.

The rules of the API that JSON Schema cannot state: atom names are unique
within a dataset (a schema can only require whole array items to differ),
and a verification names an atom version that is in the index and belongs
to the host sending it (generated ones never do). Generated add_dataset
bodies that repeat an atom name, and add_verifications bodies with any
result, are dropped here, so that every request the fuzz sends is one the
server must accept (add_verifications is fuzzed with empty lists; its
refusals are tested in src/metadata/conformance.rs and src/metadb/tests.rs).
"""

import schemathesis


@schemathesis.hook
def filter_body(context, body):
    if isinstance(body, dict) and body.get("verifications"):
        return False
    dataset = body.get("dataset") if isinstance(body, dict) else None
    if not isinstance(dataset, dict):
        return True
    names = [a.get("name") for a in dataset.get("atoms", []) if isinstance(a, dict)]
    return len(names) == len(set(names))
