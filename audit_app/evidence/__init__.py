"""Evidence packs (issue 23): the controls computed from audit entries, the pack writer and the
offline verifier. ``offline`` imports only the standard library and ``cryptography``: an auditor
can run it, or copy it, without settings or a database."""
