from muscle_pipeline.cli import run

run()
