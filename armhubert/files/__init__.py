"""Files in and out: outputs written atomically where they may go (`atomic`); untrusted files and
structure read within bounds (`untrusted`)."""
