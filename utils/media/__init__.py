"""Media: video / image / webcam I/O, drawing, and the streaming detection pipeline."""
