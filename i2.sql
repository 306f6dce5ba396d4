INSERT INTO lg2 (key, version) VALUES ('k', 1);
