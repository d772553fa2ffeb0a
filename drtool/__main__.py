from drtool.cli import main

raise SystemExit(main())
