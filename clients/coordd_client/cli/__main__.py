from coordd_client.cli import main

raise SystemExit(main())
