"""Models: the T2V backbone, the Image Retention branch, and local weight loading."""
