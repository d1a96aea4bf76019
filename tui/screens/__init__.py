"""The console's screens: rooms (the main screen), one room, dialogs and help."""
