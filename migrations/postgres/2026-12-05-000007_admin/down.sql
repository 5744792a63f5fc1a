DROP TABLE enrolment_links;
