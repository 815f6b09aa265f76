-- PostgreSQL only: its per-statement balance check became one lateral aggregate per entry.
-- SQLite checks each entry in a row trigger; nothing changes here.
SELECT 1;
