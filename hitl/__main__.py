from hitl.cli import app

app()
