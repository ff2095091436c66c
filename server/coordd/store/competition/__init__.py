"""The competition tables (`models`) and every statement the competition rules run
(`queries` for the competition, waitlist, result and notification reads and writes,
`registration` for the fixed-text statements of the registration hot path)."""
