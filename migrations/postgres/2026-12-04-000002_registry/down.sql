DROP TABLE user_roles;
DROP TABLE roles;
DROP TABLE users;
DROP TABLE client_secrets;
DROP TABLE clients;
