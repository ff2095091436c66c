"""The job tables (`models`), the hot-path statements of claim and completion (`queries`),
and the reads of views, stats and scheduler tasks (`reads`)."""
