DROP TABLE ward_meta;
