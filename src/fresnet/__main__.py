from fresnet.cli import main

raise SystemExit(main())
