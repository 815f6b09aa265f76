-- Projects beyond the default one (ProjectCreated, ProjectRenamed, ProjectArchived): when a
-- project was archived, NULL while it is in use. Keys of an archived project read as status
-- 'archived' (the read model joins the two) and no longer authenticate.
ALTER TABLE projects ADD COLUMN archived_at BIGINT;
