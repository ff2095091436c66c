"""The ground floor every layer may use: errors, the caller, the clock, ids, events and paging types.

Nothing here imports another coordd package.
"""
