"""The HTTP edge: one router module per wire API, each turning its JSON into the internal request and
the internal answer back into its JSON; plus the admin, status and error plumbing they share."""
