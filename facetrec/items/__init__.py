"""The catalog during the day: items taken down, changed or added now, in every live pair.

* ``documents``: an item's (and a user's) document as a generation holds it;
* ``changes``: an item change (put, patch, takedown) and its checks against the live catalog schema;
* ``log``: the write-ahead item change log every change goes to first;
* ``apply``: ``ItemChanges``: a change applied to every live item index (control and each arm), with
  the pair's own model's vector for a new or changed item, and replayed onto a pair that goes live;
* ``takedowns``: the taken-down items, honoured at read time by every pair.
"""
