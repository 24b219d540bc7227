-- The Unstuck ledger lives beside Temporal's own databases on the same server.
CREATE DATABASE unstuck;
