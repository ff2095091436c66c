"""The ceremony tables (`models`), every statement the ceremony rules run (`queries`), and the
rows WatchQueue streams read (`views`)."""
