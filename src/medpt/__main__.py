from medpt.cli import main

raise SystemExit(main())
