from coordd.cli import main

raise SystemExit(main())
