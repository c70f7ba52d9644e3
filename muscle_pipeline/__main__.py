from muscle_pipeline.cli import main

raise SystemExit(main())
