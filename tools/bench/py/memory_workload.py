# The workload of `isola bench memory` (tools/bench/memory.cpp), run in each interpreter of a
# pool of 2: allocation-heavy Python. It builds and drops a list of many small dicts and strings
# (pymalloc's small blocks, whole arenas made and given back, a large list buffer from the raw
# domain) and round-trips a document of a few MB through json (a large str, then as many small
# objects again). Each call checks what it built and returns a count the caller checks, so a
# broken run fails instead of looking fast.
#
# Positional arguments only when calling C functions: a keyword argument to a C function in an
# isolated interpreter makes CPython 3.12.0-3.12.3 crash at exit (gh-119213).
import json

_doc = None


def make_doc(items):
    return {'users': [{'id': i, 'name': f'user-{i}', 'email': f'user{i}@example.com',
                       'score': i * 0.5, 'tags': ['a', str(i)], 'active': i % 2 == 0}
                      for i in range(items)]}


def setup(doc_items):
    """Builds the document this interpreter round-trips; returns its size as JSON text."""
    global _doc
    _doc = make_doc(doc_items)
    return len(json.dumps(_doc))


def churn(rows):
    batch = [{'id': i, 'name': f'user-{i}', 'tags': ['a', str(i)]} for i in range(rows)]
    if len(batch) != rows or batch[-1]['name'] != f'user-{rows - 1}':
        raise AssertionError('churn: the list came out wrong')
    return len(batch)


def round_trip():
    back = json.loads(json.dumps(_doc))
    if back['users'][-1] != _doc['users'][-1]:
        raise AssertionError('round_trip: the document came back different')
    return len(back['users'])


def workload(rows, trips):
    """One repetition: returns rows + trips * the document's items."""
    done = churn(rows)
    for _ in range(trips):
        done += round_trip()
    return done
