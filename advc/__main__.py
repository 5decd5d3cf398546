from advc.cli import main

main()
