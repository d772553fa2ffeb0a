--
-- PostgreSQL database cluster dump
--

\restrict U8gaaCAsHdHIFgivRVQP2KJ90Aq4AOyWBdDvYxpndgQOXS19Zqmvnn095ixQC28

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;

--
-- User Configurations
--








\unrestrict U8gaaCAsHdHIFgivRVQP2KJ90Aq4AOyWBdDvYxpndgQOXS19Zqmvnn095ixQC28

--
-- PostgreSQL database cluster dump complete
--

