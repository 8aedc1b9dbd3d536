"""Writing and checking datasets: formats, export, validation, provider targets."""
