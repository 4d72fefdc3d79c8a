"""Fresh events: a user's new events change their vector at once, in every live pair.

* ``batch``: what an event batch is and how the API and the stream validate one (ids, times);
* ``log``: the write-ahead event log index every accepted batch goes to first, and its replay query;
* ``apply``: ``UserEvents``, which appends a batch to the user's history in a user index and
  recomputes the vector with that pair's exported encoder (optimistic concurrency), for control and
  every experiment arm, and re-applies logged batches after a swap.
"""
