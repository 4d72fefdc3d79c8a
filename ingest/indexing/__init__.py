"""The index side of the nightly job: index templates, dated generations, bulk loading,
validation, the re-index lock, and the one atomic alias swap (plus retention and rollback)."""
