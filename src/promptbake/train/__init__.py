"""Training the student: on a hosted provider (hosted.py) or on this machine."""
