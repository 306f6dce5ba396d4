INSERT INTO lg1 (key, version) VALUES ('k', 1);
