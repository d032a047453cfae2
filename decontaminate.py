"""
What the fine-tuning data may not hold (prepare.py): a valid or test function that is a copy or a
near-duplicate of a training function (MinHash, paper 5's settings: Jaccard >= 0.7, 256
permutations, character 5-grams; vendored copies across packages are common) is dropped from its
held-out split, so that a held-out score measures code the model has not been trained on.

    heldout = drop_heldout_near_duplicates(funcs, groups, where)      # {'valid': n, 'test': n}
"""


# ----------------------------------------------------------------------------- held-out near-duplicates

def drop_heldout_near_duplicates(funcs, groups, where):
    """Set where[k] = None for every valid / test function k that is an exact copy (same function
    group, whitespace-normalised) or a near-duplicate (a MinHash pair of groups['near']) of a
    function of a training repository. groups: prepare.function_groups. Returns the count per split."""
    trained = {g for g, members in enumerate(groups['reps']) if any(where[k] == 'train' for k in members)}
    near_train = set(trained)
    for a, b, _ in groups['near']:
        if a in trained:
            near_train.add(b)
        if b in trained:
            near_train.add(a)
    dropped = {'valid': 0, 'test': 0}
    for k in range(len(funcs)):
        if where[k] in dropped and groups['gid'][k] in near_train:
            dropped[where[k]] += 1
            where[k] = None
    return dropped
