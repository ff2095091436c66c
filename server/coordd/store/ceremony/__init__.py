"""The ceremony tables (`models`) and every statement the ceremony rules run (`queries`)."""
