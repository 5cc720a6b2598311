from nextoken.cli import main

raise SystemExit(main())
