/*
 * pg.c -- the PostgreSQL storage: task records in one table, reached through libpq (see
 * storage.h for the record and the compare-and-set contract).
 *
 * The URL. postgresql:// and postgres:// go to libpq; the SQLAlchemy spellings
 * postgresql+asyncpg:// and postgresql+psycopg:// (any "+driver") lose the "+driver" part,
 * so a Bindu agent's DATABASE_URL works as it is. Before libpq sees it, bq_pg_url_split
 * (net/url.h) takes the secrets out: the user-info is everything up to the last '@' (a
 * generated password with an unencoded '/' or '?' would otherwise be read by libpq as a
 * port or a database name and quoted in its errors), and its password and every password
 * option (?password=, ?sslpassword=) become separate keywords. libpq then parses a URL with
 * no secret in it (PQconnectdbParams with expand_dbname), so its complaints about the URL
 * can be passed on; we add connect_timeout (from the configuration, whole seconds) and
 * fallback_application_name=binduq (so pg_stat_activity shows who we are, unless the URL or
 * PGAPPNAME names the application otherwise). We name the target as "host:port/db", and
 * every libpq text we copy is scrubbed of each password as well, in case a libpq echoes a
 * keyword's value.
 *
 * The pool. A storage owns up to max_connections libpq connections, opened lazily, kept on
 * a stack of idle ones (the most recently used is lent first, so a quiet process keeps one
 * warm connection). Borrowing waits on a condition variable until one is returned, up to
 * the connect timeout, then fails with BQ_ETIMEDOUT. A connection is used by one thread at a
 * time: that is all the thread safety libpq needs. A connection comes back to the stack only
 * if it is healthy and outside any transaction; otherwise it is closed and its slot freed.
 *
 * Reconnects. Before each statement we let libpq read whatever the server sent while the
 * connection sat idle (PQconsumeInput): a backend terminated by an administrator, or a
 * server that shut down, leaves its goodbye and an end of file there, and libpq then marks
 * the connection CONNECTION_BAD. A bad connection is reset (PQreset, the same parameters)
 * and its statements prepared again; the reset is logged at warn level. If a statement
 * itself fails because the connection was lost, we reset and run it once more. That retry
 * is safe in the common case (the server dropped the connection between statements, so the
 * first try never ran), but when a connection breaks after the server committed and before
 * the reply arrived, the retry of a change runs the change a second time: its compare-and-set
 * then usually refuses (changed=false, the state the first try wrote), and an append without
 * a state change is appended twice. The storage interface has no idempotency key to do
 * better.
 *
 * The schema. Opening connects once and migrates, in one transaction serialised across
 * processes by pg_advisory_xact_lock(hashtext('binduq:' || schema)): the schema and the
 * schema_version table are created when missing (looked up first, so a role without CREATE
 * privileges can use a schema an administrator made), then the migrations the version lacks
 * are applied and the version row (exactly one) is written. Several processes opening at
 * once therefore wait for each other and find the work done. A schema newer than this build
 * is used as it is. Every statement names the schema explicitly (quoted with
 * PQescapeIdentifier), so search_path never matters.
 *
 * Statements. create, the state read-back, get, change and remove are prepared once per
 * session (after a connect or a reset). list is built per call from fixed fragments with $n
 * parameters; no value is ever put into SQL text. JSON columns are jsonb, so the text read
 * back is PostgreSQL's rendering (one space after ':' and ',', keys ordered, duplicate keys
 * dropped), equal as JSON to what was stored but not byte for byte. Times travel as integer
 * microseconds since the epoch, which no locale can misread.
 *
 * Errors. SQL errors are BQ_EPG with the server's primary message and SQLSTATE; a connection
 * that cannot be made is BQ_EAUTH, BQ_ECONNREFUSED, BQ_ETIMEDOUT, BQ_ENOTFOUND or BQ_EIO
 * (read from libpq's message, which is English unless libpq was built with translations and
 * the locale asks for them; then everything is BQ_EIO); a lost connection is BQ_EIO.
 */
#include "storage.h"

#include "pqapi.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../net/url.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_DEFAULT_SCHEMA "binduq"
#define PG_DEFAULT_MAX 4
#define PG_DEFAULT_TIMEOUT 5.0
#define PG_APP_NAME "binduq"
#define PG_OPEN_STATES "submitted,working,input-required,auth-required,paused"

/* ---- Statements ---------------------------------------------------------------------------- */

/* "@S" in these texts stands for the quoted schema name. */

/* The migrations, in order: migrations[i] brings the schema from version i to i + 1. Each
 * runs inside the migrating transaction; never edit one that has shipped, add another. */
static const char *const migrations[] = {
    /* 1: the tasks table and the indexes of its queries. */
    "CREATE TABLE @S.tasks ("
    " id text PRIMARY KEY,"
    " context_id text,"
    " state text NOT NULL CONSTRAINT tasks_state_check CHECK (state IN ('submitted',"
    "  'working', 'input-required', 'auth-required', 'paused', 'completed', 'failed',"
    "  'canceled', 'rejected')),"
    " queue text,"
    " history jsonb NOT NULL DEFAULT '[]',"
    " artifacts jsonb NOT NULL DEFAULT '[]',"
    " metadata jsonb NOT NULL DEFAULT '{}',"
    " checkpoint jsonb,"
    " error jsonb,"
    " requested text,"
    " attempts int NOT NULL DEFAULT 0,"
    " worker text,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now(),"
    " state_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX tasks_state_state_at_idx ON @S.tasks (state, state_at);"
    "CREATE INDEX tasks_context_created_idx ON @S.tasks (context_id, created_at);"
    "CREATE INDEX tasks_created_idx ON @S.tasks (created_at DESC);",
};
#define PG_SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* The "bindu" layout (storage.h): Bindu's own tables in the agent's schema, which Bindu's API
 * processes read and write, with what only binduq keeps in a table of its own beside them,
 * and a view, binduq_tasks, that shows the two as one record of binduq's (states as binduq
 * names them: Bindu's "suspended" is "paused"; each message with its `content`, its text
 * parts joined by spaces as Bindu joins them). Writing to the view writes Bindu's rows in
 * Bindu's shapes (A2A messages with message_id, kind, parts, role, task_id, context_id;
 * artifacts with an artifact_id; state_timestamp and updated_at kept). Every statement of
 * binduq's runs on the view unchanged; the trigger locks Bindu's row and checks it still
 * holds the state and request the statement saw, so a compare-and-set stays one, also
 * against Bindu's own update_task_state_if. Bindu's tables are created only if missing, as
 * Bindu's schema.py creates them. */
static const char *const bindu_migrations[] = {
    "CREATE TABLE IF NOT EXISTS @S.contexts ("
    " id uuid PRIMARY KEY, owner_did varchar(255),"
    " context_data jsonb NOT NULL DEFAULT '{}'::jsonb, message_history jsonb DEFAULT '[]'::jsonb,"
    " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS @S.tasks ("
    " id uuid PRIMARY KEY,"
    " context_id uuid NOT NULL REFERENCES @S.contexts (id) ON DELETE CASCADE,"
    " owner_did varchar(255), kind varchar(50) NOT NULL DEFAULT 'task', state varchar(50) NOT NULL,"
    " state_timestamp timestamptz NOT NULL DEFAULT now(), history jsonb NOT NULL DEFAULT '[]'::jsonb,"
    " artifacts jsonb DEFAULT '[]'::jsonb, metadata jsonb DEFAULT '{}'::jsonb,"
    " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE @S.binduq_state ("
    " id uuid PRIMARY KEY REFERENCES @S.tasks (id) ON DELETE CASCADE,"
    " queue text, checkpoint jsonb, error jsonb, requested text, attempts int NOT NULL DEFAULT 0,"
    " worker text);"
    "CREATE INDEX binduq_tasks_id_text_idx ON @S.tasks ((id::text));",
    /* an A2A message as binduq reads it: with content */
    "CREATE FUNCTION @S.binduq_native(m jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $f$"
    " SELECT CASE WHEN jsonb_typeof(m) <> 'object' OR m ? 'content' THEN m"
    "  ELSE m || jsonb_build_object('content', COALESCE((SELECT string_agg(p->>'text', ' ' ORDER BY o)"
    "   FROM jsonb_array_elements(CASE WHEN jsonb_typeof(m->'parts') = 'array' THEN m->'parts'"
    "    ELSE '[]'::jsonb END) WITH ORDINALITY AS x(p, o)"
    "   WHERE p->>'kind' = 'text' AND jsonb_typeof(p->'text') = 'string'), '')) END $f$;"
    /* a message of binduq's as Bindu keeps it: an A2A message of its task and context */
    "CREATE FUNCTION @S.binduq_a2a(m jsonb, t uuid, c uuid) RETURNS jsonb LANGUAGE sql AS $f$"
    " SELECT jsonb_build_object('message_id', COALESCE(m->>'message_id', gen_random_uuid()::text),"
    "  'context_id', c::text, 'task_id', t::text, 'kind', 'message',"
    "  'parts', CASE WHEN jsonb_typeof(m->'parts') = 'array' THEN m->'parts'"
    "   ELSE jsonb_build_array(jsonb_build_object('kind', 'text', 'text', COALESCE(m->>'content', ''))) END,"
    "  'role', COALESCE(m->>'role', 'user'))"
    "  || CASE WHEN jsonb_typeof(m->'metadata') = 'object'"
    "   THEN jsonb_build_object('metadata', m->'metadata') ELSE '{}'::jsonb END $f$;"
    /* the entries of `now` past the first len(was), as Bindu keeps them */
    "CREATE FUNCTION @S.binduq_tail(was jsonb, now jsonb, t uuid, c uuid, msgs boolean)"
    " RETURNS jsonb LANGUAGE sql AS $f$"
    " SELECT COALESCE(jsonb_agg(CASE WHEN msgs THEN @S.binduq_a2a(e, t, c)"
    "  WHEN jsonb_typeof(e) = 'object' AND NOT e ? 'artifact_id'"
    "  THEN jsonb_build_object('artifact_id', gen_random_uuid()::text) || e ELSE e END ORDER BY o), '[]'::jsonb)"
    " FROM jsonb_array_elements(COALESCE(now, '[]'::jsonb)) WITH ORDINALITY AS x(e, o)"
    " WHERE o > jsonb_array_length(COALESCE(was, '[]'::jsonb)) $f$;",
    "CREATE VIEW @S.binduq_tasks AS SELECT t.id::text AS id, t.context_id::text AS context_id,"
    " CASE t.state WHEN 'suspended' THEN 'paused' ELSE t.state::text END AS state, b.queue,"
    " (SELECT COALESCE(jsonb_agg(@S.binduq_native(e) ORDER BY o), '[]'::jsonb)"
    "  FROM jsonb_array_elements(t.history) WITH ORDINALITY AS x(e, o)) AS history,"
    " COALESCE(t.artifacts, '[]'::jsonb) AS artifacts, COALESCE(t.metadata, '{}'::jsonb) AS metadata,"
    " b.checkpoint, b.error, b.requested, COALESCE(b.attempts, 0) AS attempts, b.worker,"
    " t.created_at, t.updated_at, t.state_timestamp AS state_at"
    " FROM @S.tasks t LEFT JOIN @S.binduq_state b ON b.id = t.id;",
    "CREATE FUNCTION @S.binduq_tasks_write() RETURNS trigger LANGUAGE plpgsql AS $f$"
    " DECLARE tid uuid; cid uuid; cur RECORD;"
    " BEGIN"
    "  IF TG_OP = 'DELETE' THEN"
    "   DELETE FROM @S.tasks WHERE id = OLD.id::uuid; RETURN OLD;"
    "  END IF;"
    "  IF TG_OP = 'INSERT' THEN"
    "   tid := NEW.id::uuid;"
    "   cid := COALESCE(NEW.context_id, gen_random_uuid()::text)::uuid;"
    "   INSERT INTO @S.contexts (id) VALUES (cid) ON CONFLICT (id) DO NOTHING;"
    "   INSERT INTO @S.tasks (id, context_id, kind, state, state_timestamp, history, artifacts, metadata)"
    "    VALUES (tid, cid, 'task', CASE NEW.state WHEN 'paused' THEN 'suspended' ELSE NEW.state END, now(),"
    "     @S.binduq_tail('[]'::jsonb, NEW.history, tid, cid, true),"
    "     @S.binduq_tail('[]'::jsonb, NEW.artifacts, tid, cid, false), COALESCE(NEW.metadata, '{}'::jsonb))"
    "    ON CONFLICT (id) DO NOTHING;"
    "   IF NOT FOUND THEN RETURN NULL; END IF;"
    "   INSERT INTO @S.binduq_state (id, queue, checkpoint, error, requested, attempts, worker)"
    "    VALUES (tid, NEW.queue, NEW.checkpoint, NEW.error, NEW.requested, COALESCE(NEW.attempts, 0),"
    "     NEW.worker);"
    "   NEW.context_id := cid::text;"
    "   RETURN NEW;"
    "  END IF;"
    "  tid := OLD.id::uuid; cid := OLD.context_id::uuid;"
    /* the compare-and-set: Bindu's row, locked, still holds what the statement saw (read
     * again once locked: a locking read re-checks only the row it locks) */
    "  PERFORM 1 FROM @S.tasks WHERE id = tid FOR UPDATE;"
    "  SELECT t.state, b.requested INTO cur FROM @S.tasks t LEFT JOIN @S.binduq_state b ON b.id = t.id"
    "   WHERE t.id = tid;"
    "  IF NOT FOUND OR (CASE cur.state WHEN 'suspended' THEN 'paused' ELSE cur.state END) <> OLD.state"
    "   OR cur.requested IS DISTINCT FROM OLD.requested THEN RETURN NULL; END IF;"
    "  UPDATE @S.tasks SET state = CASE NEW.state WHEN 'paused' THEN 'suspended' ELSE NEW.state END,"
    "   state_timestamp = CASE WHEN NEW.state IS DISTINCT FROM OLD.state THEN now() ELSE state_timestamp END,"
    "   history = history || @S.binduq_tail(OLD.history, NEW.history, tid, cid, true),"
    "   artifacts = COALESCE(artifacts, '[]'::jsonb) || @S.binduq_tail(OLD.artifacts, NEW.artifacts, tid, cid, false),"
    "   metadata = CASE WHEN NEW.metadata IS DISTINCT FROM OLD.metadata THEN NEW.metadata ELSE metadata END,"
    "   updated_at = now() WHERE id = tid;"
    "  INSERT INTO @S.binduq_state AS b (id, queue, checkpoint, error, requested, attempts, worker)"
    "   VALUES (tid, NEW.queue, NEW.checkpoint, NEW.error, NEW.requested, NEW.attempts, NEW.worker)"
    "   ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, checkpoint = EXCLUDED.checkpoint,"
    "    error = EXCLUDED.error, requested = EXCLUDED.requested, attempts = EXCLUDED.attempts,"
    "    worker = EXCLUDED.worker;"
    "  RETURN NEW;"
    " END $f$;"
    "CREATE TRIGGER binduq_tasks_write INSTEAD OF INSERT OR UPDATE OR DELETE ON @S.binduq_tasks"
    " FOR EACH ROW EXECUTE FUNCTION @S.binduq_tasks_write();",
    /* 5: an update writes only the binduq columns the statement changed, onto the row as it is
     * once locked, and adds its attempts to the count: NEW is the statement's snapshot, so a
     * change that keeps the state undid a concurrent one's checkpoint, error, worker, queue
     * and attempts; RETURNING gives the attempts as stored. The rest is migration 4's
     * function. */
    "CREATE OR REPLACE FUNCTION @S.binduq_tasks_write() RETURNS trigger LANGUAGE plpgsql AS $f$"
    " DECLARE tid uuid; cid uuid; cur RECORD; n int;"
    " BEGIN"
    "  IF TG_OP = 'DELETE' THEN"
    "   DELETE FROM @S.tasks WHERE id = OLD.id::uuid; RETURN OLD;"
    "  END IF;"
    "  IF TG_OP = 'INSERT' THEN"
    "   tid := NEW.id::uuid;"
    "   cid := COALESCE(NEW.context_id, gen_random_uuid()::text)::uuid;"
    "   INSERT INTO @S.contexts (id) VALUES (cid) ON CONFLICT (id) DO NOTHING;"
    "   INSERT INTO @S.tasks (id, context_id, kind, state, state_timestamp, history, artifacts, metadata)"
    "    VALUES (tid, cid, 'task', CASE NEW.state WHEN 'paused' THEN 'suspended' ELSE NEW.state END, now(),"
    "     @S.binduq_tail('[]'::jsonb, NEW.history, tid, cid, true),"
    "     @S.binduq_tail('[]'::jsonb, NEW.artifacts, tid, cid, false), COALESCE(NEW.metadata, '{}'::jsonb))"
    "    ON CONFLICT (id) DO NOTHING;"
    "   IF NOT FOUND THEN RETURN NULL; END IF;"
    "   INSERT INTO @S.binduq_state (id, queue, checkpoint, error, requested, attempts, worker)"
    "    VALUES (tid, NEW.queue, NEW.checkpoint, NEW.error, NEW.requested, COALESCE(NEW.attempts, 0),"
    "     NEW.worker);"
    "   NEW.context_id := cid::text;"
    "   RETURN NEW;"
    "  END IF;"
    "  tid := OLD.id::uuid; cid := OLD.context_id::uuid;"
    "  PERFORM 1 FROM @S.tasks WHERE id = tid FOR UPDATE;"
    "  SELECT t.state, b.requested INTO cur FROM @S.tasks t LEFT JOIN @S.binduq_state b ON b.id = t.id"
    "   WHERE t.id = tid;"
    "  IF NOT FOUND OR (CASE cur.state WHEN 'suspended' THEN 'paused' ELSE cur.state END) <> OLD.state"
    "   OR cur.requested IS DISTINCT FROM OLD.requested THEN RETURN NULL; END IF;"
    "  UPDATE @S.tasks SET state = CASE NEW.state WHEN 'paused' THEN 'suspended' ELSE NEW.state END,"
    "   state_timestamp = CASE WHEN NEW.state IS DISTINCT FROM OLD.state THEN now() ELSE state_timestamp END,"
    "   history = history || @S.binduq_tail(OLD.history, NEW.history, tid, cid, true),"
    "   artifacts = COALESCE(artifacts, '[]'::jsonb) || @S.binduq_tail(OLD.artifacts, NEW.artifacts, tid, cid, false),"
    "   metadata = CASE WHEN NEW.metadata IS DISTINCT FROM OLD.metadata THEN NEW.metadata ELSE metadata END,"
    "   updated_at = now() WHERE id = tid;"
    "  INSERT INTO @S.binduq_state AS b (id, queue, checkpoint, error, requested, attempts, worker)"
    "   VALUES (tid, NEW.queue, NEW.checkpoint, NEW.error, NEW.requested, NEW.attempts, NEW.worker)"
    "   ON CONFLICT (id) DO UPDATE SET"
    "    queue = CASE WHEN NEW.queue IS DISTINCT FROM OLD.queue THEN EXCLUDED.queue ELSE b.queue END,"
    "    checkpoint = CASE WHEN NEW.checkpoint IS DISTINCT FROM OLD.checkpoint"
    "     THEN EXCLUDED.checkpoint ELSE b.checkpoint END,"
    "    error = CASE WHEN NEW.error IS DISTINCT FROM OLD.error THEN EXCLUDED.error ELSE b.error END,"
    "    requested = CASE WHEN NEW.requested IS DISTINCT FROM OLD.requested"
    "     THEN EXCLUDED.requested ELSE b.requested END,"
    "    attempts = b.attempts + (NEW.attempts - OLD.attempts),"
    "    worker = CASE WHEN NEW.worker IS DISTINCT FROM OLD.worker THEN EXCLUDED.worker ELSE b.worker END"
    "   RETURNING b.attempts INTO n;"
    "  NEW.attempts := n;" /* what RETURNING reports: the count as stored */
    "  RETURN NEW;"
    " END $f$;",
};
#define PG_BINDU_VERSION ((int)(sizeof bindu_migrations / sizeof bindu_migrations[0]))

/* The columns of a record, in the order row_to_rec reads them. */
#define REC_COLS                                                                               \
    "id, context_id, state, queue, history::text, artifacts::text, metadata::text, "           \
    "checkpoint::text, error::text, requested, attempts, worker, "                             \
    "(extract(epoch FROM created_at) * 1000000)::int8, "                                       \
    "(extract(epoch FROM updated_at) * 1000000)::int8, "                                       \
    "(extract(epoch FROM state_at) * 1000000)::int8"

enum { COL_ATTEMPTS = 10, COL_WORKER = 11, COL_CREATED = 12, COL_UPDATED = 13, COL_STATE_AT = 14 };

enum {
    ST_CREATE = 0, ST_STATE, ST_GET, ST_CHANGE, ST_REMOVE, ST_CHANGE_MANY, ST_START_MANY,
    ST_CHANGE_START_MANY, ST_COUNT
};

/* bq_change for a batch: P is a JSON array of {id, f, t, h, a, k, e, r, w, n} (bq_change's
 * $1..$10, with distinct ids; a key left out is NULL). CHANGES_ROWS gives one row per change,
 * in no order (batch_results places them by id): whether it was made, the id, then the
 * state, requested and attempts after it, or of the record that refused it (the statement's
 * snapshot), and whether the task exists. The refused are found without a join of the
 * changed back to the batch (a hashed NOT IN), and only they are looked up again: with hash
 * and merge joins off (see prepare), joining the two row sets took a nested loop over both,
 * 64 x 64 rows. */
#define CHANGES_CTE(P)                                                                          \
    "c AS (SELECT * FROM jsonb_to_recordset(" P "::text::jsonb) AS c("                          \
    "  id text, f text, t text, h text, a text, k text, e text, r text, w text, n int)),"      \
    " u AS (UPDATE @S.tasks AS x SET"                                                           \
    "  state = COALESCE(c.t, x.state),"                                                         \
    "  history = CASE WHEN c.h IS NULL THEN x.history ELSE x.history || c.h::jsonb END,"        \
    "  artifacts = CASE WHEN c.a IS NULL THEN x.artifacts ELSE x.artifacts || c.a::jsonb END,"  \
    "  checkpoint = CASE WHEN c.k IS NULL THEN x.checkpoint"                                    \
    "   WHEN c.k = '' THEN NULL ELSE c.k::jsonb END,"                                           \
    "  error = CASE WHEN c.e IS NULL THEN x.error WHEN c.e = '' THEN NULL ELSE c.e::jsonb END," \
    "  requested = CASE WHEN c.r IS NULL THEN x.requested"                                      \
    "   WHEN c.r = '' THEN NULL ELSE c.r END,"                                                  \
    "  worker = CASE WHEN c.w IS NULL THEN x.worker WHEN c.w = '' THEN NULL ELSE c.w END,"      \
    "  attempts = x.attempts + c.n,"                                                            \
    "  updated_at = now(),"                                                                     \
    "  state_at = CASE WHEN c.t IS NOT NULL AND c.t <> x.state THEN now() ELSE x.state_at END"  \
    "  FROM c WHERE x.id = c.id AND x.state = ANY (string_to_array(c.f, ','))"                  \
    "  RETURNING x.id, x.state, x.requested, x.attempts)"
#define CHANGES_ROWS                                                                            \
    "SELECT true, id, state, requested, attempts, true FROM u"                                  \
    " UNION ALL SELECT false, c.id, x.state, x.requested, x.attempts, x.id IS NOT NULL"         \
    " FROM c LEFT JOIN @S.tasks x ON x.id = c.id WHERE c.id NOT IN (SELECT id FROM u)"
/* store:start for a batch (bq_storage_start_many): P is a JSON array of {id, ctx, q, h, m, w}
 * (distinct ids). Submitted -> working with the attempt counted, or a new record created
 * working; rows as CHANGES_ROWS's. */
#define STARTS_CTE(P)                                                                           \
    "s AS (SELECT * FROM jsonb_to_recordset(" P "::text::jsonb) AS s("                          \
    "  id text, ctx text, q text, h text, m text, w text)),"                                   \
    " v AS (INSERT INTO @S.tasks AS x (id, context_id, state, queue, history,"                  \
    "  metadata, worker, attempts)"                                                             \
    "  SELECT s.id, s.ctx, 'working', s.q, COALESCE(s.h, '[]')::jsonb,"                         \
    "  COALESCE(s.m, '{}')::jsonb, s.w, 1 FROM s"                                               \
    "  ON CONFLICT (id) DO UPDATE SET state = 'working', worker = EXCLUDED.worker,"             \
    "  requested = NULL, attempts = x.attempts + 1, updated_at = now(),"                        \
    "  state_at = now() WHERE x.state = 'submitted'"                                            \
    "  RETURNING x.id, x.state, x.requested, x.attempts)"
#define STARTS_ROWS                                                                             \
    "SELECT true, id, state, requested, attempts, true FROM v"                                  \
    " UNION ALL SELECT false, s.id, x.state, x.requested, x.attempts, x.id IS NOT NULL"         \
    " FROM s LEFT JOIN @S.tasks x ON x.id = s.id WHERE s.id NOT IN (SELECT id FROM v)"

static const struct {
    const char *name;
    int nparams;
    const char *sql;
} stmts[ST_COUNT] = {
    [ST_CREATE] = {"bq_create", 9,
                   "INSERT INTO @S.tasks (id, context_id, state, queue, history, metadata, worker,"
                   " attempts, requested) "
                   "VALUES ($1::text, $2::text, $3::text, $4::text, "
                   "COALESCE($5::text, '[]')::jsonb, COALESCE($6::text, '{}')::jsonb, $7::text,"
                   " $8::int, NULLIF($9::text, '')) "
                   "ON CONFLICT (id) DO NOTHING RETURNING state, requested, attempts"},
    [ST_STATE] = {"bq_state", 1,
                  "SELECT state, requested, attempts FROM @S.tasks WHERE id = $1::text"},
    [ST_GET] = {"bq_get", 1, "SELECT " REC_COLS " FROM @S.tasks WHERE id = $1::text"},
    /* The compare-and-set. Every parameter is text and is compared with '' before any cast,
     * so "" can mean "clear" for a jsonb column. $2 is the comma-separated allowed states. */
    [ST_CHANGE] = {"bq_change", 11,
                   "UPDATE @S.tasks SET"
                   " state = COALESCE($3::text, state),"
                   " history = CASE WHEN $4::text IS NULL THEN history"
                   "  ELSE history || $4::text::jsonb END,"
                   " artifacts = CASE WHEN $5::text IS NULL THEN artifacts"
                   "  ELSE artifacts || $5::text::jsonb END,"
                   " checkpoint = CASE WHEN $6::text IS NULL THEN checkpoint"
                   "  WHEN $6::text = '' THEN NULL ELSE $6::text::jsonb END,"
                   " error = CASE WHEN $7::text IS NULL THEN error"
                   "  WHEN $7::text = '' THEN NULL ELSE $7::text::jsonb END,"
                   " requested = CASE WHEN $8::text IS NULL THEN requested"
                   "  WHEN $8::text = '' THEN NULL ELSE $8::text END,"
                   " worker = CASE WHEN $9::text IS NULL THEN worker"
                   "  WHEN $9::text = '' THEN NULL ELSE $9::text END,"
                   " attempts = attempts + $10::int,"
                   " updated_at = now(),"
                   " state_at = CASE WHEN $3::text IS NOT NULL AND $3::text <> state"
                   "  THEN now() ELSE state_at END"
                   " WHERE id = $1::text AND state = ANY (string_to_array($2::text, ','))"
                   "  AND ($11::text IS NULL OR COALESCE(requested, '') = $11::text)"
                   " RETURNING state, requested, attempts"},
    [ST_REMOVE] = {"bq_remove", 1, "DELETE FROM @S.tasks WHERE id = $1::text RETURNING id"},
    /* bq_change for a batch: $1 is a JSON array of {id, f, t, h, a, k, e, r, w, n} (bq_change's
     * $1..$10, with distinct ids). One row per change, in no order (batch_results places
     * them by id): whether it was made, the id, then the state, requested and attempts after
     * it, or of the record that refused it (the statement's snapshot), and whether the task
     * exists. The refused are found without a join of the changed back to the batch (a
     * hashed NOT IN), and only they are looked up again: with hash and merge joins off (see
     * prepare), joining the two row sets took a nested loop over both, 64 x 64 rows. */
    [ST_CHANGE_MANY] = {"bq_change_many", 1, "WITH " CHANGES_CTE("$1") " " CHANGES_ROWS},
    [ST_START_MANY] = {"bq_start_many", 1, "WITH " STARTS_CTE("$1") " " STARTS_ROWS},
    /* bq_change_many then bq_start_many, their ids distinct: one statement, so one
     * transaction and one commit. Its rows are theirs, placed by id. */
    [ST_CHANGE_START_MANY] = {"bq_change_start_many", 2,
                   "WITH " CHANGES_CTE("$1") ", " STARTS_CTE("$2") " " CHANGES_ROWS
                   " UNION ALL " STARTS_ROWS},
};

/* ---- The storage --------------------------------------------------------------------------- */

struct pgconn {
    PGconn *pg;
    bool prepared;     /* the statements of stmts[] exist in this session */
    char fatal[160];   /* the server's last FATAL notice (why it dropped us), or "" */
};

typedef struct pg_storage {
    bq_storage base; /* first: bq_storage_unref reaches destroy through it */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int max;                /* max_connections */
    int total;              /* connections lent out, idle, or being opened */
    int nidle;
    struct pgconn **idle;   /* owned array of max slots */
    double timeout;         /* connect_timeout, and how long a borrow waits */
    char timeout_str[16];   /* the same, whole seconds, for libpq */
    struct bq_pg_url url;   /* owned: the URL for libpq (no secret) and the password keywords */
    char target[160];       /* "host:port/db", for messages and logs */
    char *schema;           /* owned: the schema name as configured */
    char *qschema;          /* owned: the same quoted as an identifier */
    char *sql[ST_COUNT];    /* owned: stmts[].sql with the schema filled in (NULL: not
                             * in this layout) */
    bool bindu;             /* the "bindu" layout: the statements run on the view */
} pg_storage;

/* ---- Messages ------------------------------------------------------------------------------ */

/* Copies libpq text into out on one line: newlines and tabs become single spaces, the
 * "ERROR:  " style padding collapses, trailing space goes. */
static void flatten(const char *in, char *out, size_t size)
{
    size_t n = 0;
    bool space = true; /* drops leading space too */
    for (const char *p = in ? in : ""; *p != '\0' && n + 1 < size; p++) {
        bool ws = *p == '\n' || *p == '\t' || *p == '\r' || *p == ' ';
        if (ws && space)
            continue;
        out[n++] = ws ? ' ' : *p;
        space = ws;
    }
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* Replaces every occurrence of each password of the URL in err->msg by "***" (one pass per
 * password, so a password made of '*' cannot loop). Returns err->code. */
static bq_status scrub(const pg_storage *s, bq_err *err)
{
    if (err == NULL || s == NULL)
        return err ? err->code : BQ_OK;
    for (size_t k = 0; k < s->url.nsecrets; k++) {
        const char *pw = s->url.values[k];
        if (pw == NULL || pw[0] == '\0')
            continue;
        char tmp[sizeof err->msg];
        size_t plen = strlen(pw), n = 0;
        for (const char *p = err->msg; *p != '\0' && n + 1 < sizeof tmp;) {
            if (strncmp(p, pw, plen) == 0) {
                for (int i = 0; i < 3 && n + 1 < sizeof tmp; i++)
                    tmp[n++] = '*';
                p += plen;
            } else {
                tmp[n++] = *p++;
            }
        }
        tmp[n] = '\0';
        memcpy(err->msg, tmp, n + 1);
    }
    return err->code;
}

/* The status for a failed connection attempt, from libpq's account of it. */
static bq_status connect_code(PGconn *pg, const char *msg)
{
    if ((pg != NULL && bq_pq.PQconnectionNeedsPassword(pg)) ||
        strstr(msg, "authentication failed") != NULL ||
        strstr(msg, "no password supplied") != NULL ||
        (strstr(msg, "role \"") != NULL && strstr(msg, "does not exist") != NULL))
        return BQ_EAUTH;
    if (strstr(msg, "timeout expired") != NULL)
        return BQ_ETIMEDOUT;
    if (strstr(msg, "Connection refused") != NULL || strstr(msg, "No such file or directory"))
        return BQ_ECONNREFUSED;
    if (strstr(msg, "could not translate host name") != NULL ||
        strstr(msg, "Name or service not known") != NULL)
        return BQ_ENOTFOUND;
    return BQ_EIO;
}

/* Reports a connection that could not be made (or remade) by `call`. */
static bq_status connect_fail(const pg_storage *s, PGconn *pg, const char *call, bq_err *err)
{
    char text[256];
    flatten(pg ? bq_pq.PQerrorMessage(pg) : "out of memory", text, sizeof text);
    bq_status code = pg ? connect_code(pg, text) : BQ_ENOMEM;
    bq_err_set(err, code, "%s (%s): %s", call, s->target, text);
    return scrub(s, err);
}

/* True if the connection is gone: the statement never reached the server or its reply
 * never came back, so a fresh session may run it again. */
static bool connection_lost(PGconn *pg, const PGresult *res)
{
    if (bq_pq.PQstatus(pg) != CONNECTION_OK)
        return true;
    if (res == NULL || bq_pq.PQresultStatus(res) != PGRES_FATAL_ERROR)
        return false;
    const char *code = bq_pq.PQresultErrorField(res, PG_DIAG_SQLSTATE);
    /* 08: connection exception; 57P01..57P03: admin/crash shutdown, cannot connect now. */
    return code != NULL && (strncmp(code, "08", 2) == 0 || strcmp(code, "57P01") == 0 ||
                            strcmp(code, "57P02") == 0 || strcmp(code, "57P03") == 0);
}

/* Reports a statement that failed (res may be NULL). `call` names it. */
static bq_status exec_fail(const pg_storage *s, PGconn *pg, const PGresult *res,
                           const char *call, bq_err *err)
{
    char text[224];
    const char *primary = res ? bq_pq.PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *sqlstate = res ? bq_pq.PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (primary != NULL) {
        char flat[200];
        flatten(primary, flat, sizeof flat);
        if (sqlstate != NULL)
            snprintf(text, sizeof text, "%s (SQLSTATE %s)", flat, sqlstate);
        else
            snprintf(text, sizeof text, "%s", flat);
    } else if (res != NULL && bq_pq.PQresultErrorMessage(res)[0] != '\0') {
        flatten(bq_pq.PQresultErrorMessage(res), text, sizeof text);
    } else if (res != NULL && bq_pq.PQresultStatus(res) != PGRES_FATAL_ERROR) {
        snprintf(text, sizeof text, "unexpected result %s",
                 bq_pq.PQresStatus(bq_pq.PQresultStatus(res)));
    } else {
        flatten(bq_pq.PQerrorMessage(pg), text, sizeof text);
    }
    bq_status code = BQ_EPG;
    if (connection_lost(pg, res) || res == NULL)
        code = BQ_EIO;
    else if (bq_pq.PQresultStatus(res) != PGRES_FATAL_ERROR)
        code = BQ_EPROTO;
    bq_err_set(err, code, "%s: %s", call, text[0] ? text : "connection lost");
    return scrub(s, err);
}

/* libpq prints notices (CREATE ... IF NOT EXISTS, a backend's goodbye) to stderr by
 * default; a library must not. We keep only a FATAL one: a server that ends a session
 * between statements says why in a notice ("terminating connection due to administrator
 * command"), and the reconnect log gives that reason. Runs in the thread using the
 * connection. */
static void on_notice(void *arg, const char *message)
{
    struct pgconn *c = arg;
    if (strncmp(message, "FATAL:", 6) == 0)
        flatten(message + 6, c->fatal, sizeof c->fatal);
}

/* ---- Connections --------------------------------------------------------------------------- */

/* Opens c->pg (c is zeroed). */
static bq_status pg_connect(const pg_storage *s, struct pgconn *c, bq_err *err)
{
    /* Later keywords override what the URL says; fallback_application_name yields to it.
     * The passwords follow the URL in the order bq_pg_url_split found them. */
    const char *keys[BQ_PG_URL_MAX_SECRETS + 4] = {"fallback_application_name", "dbname"};
    const char *vals[BQ_PG_URL_MAX_SECRETS + 4] = {PG_APP_NAME, s->url.url};
    size_t n = 2;
    for (size_t i = 0; i < s->url.nsecrets; i++, n++) {
        keys[n] = s->url.keys[i];
        vals[n] = s->url.values[i];
    }
    keys[n] = "connect_timeout";
    vals[n++] = s->timeout_str;
    keys[n] = vals[n] = NULL;
    PGconn *pg = bq_pq.PQconnectdbParams(keys, vals, 1);
    if (pg == NULL || bq_pq.PQstatus(pg) != CONNECTION_OK) {
        bq_status st = connect_fail(s, pg, "PQconnectdbParams", err);
        bq_pq.PQfinish(pg);
        return st;
    }
    bq_pq.PQsetNoticeProcessor(pg, on_notice, c); /* kept across PQreset */
    c->pg = pg;
    return BQ_OK;
}

static void conn_free(struct pgconn *c)
{
    if (c != NULL) {
        bq_pq.PQfinish(c->pg);
        bq_free(c);
    }
}

/* Resets a connection that was lost (PQreset: the same parameters); logs why. */
static bq_status reconnect(const pg_storage *s, struct pgconn *c, bq_err *err)
{
    char reason[200];
    bq_err why;
    flatten(bq_pq.PQerrorMessage(c->pg), reason, sizeof reason);
    if (c->fatal[0] != '\0')
        bq_err_set(&why, BQ_EIO, "%s (%s)", c->fatal, reason[0] ? reason : "connection lost");
    else
        bq_err_set(&why, BQ_EIO, "%s", reason[0] ? reason : "connection lost");
    c->fatal[0] = '\0';
    scrub(s, &why);
    bq_log(BQ_LOG_WARN, "storage_reconnect", "storage", "postgres", "target", s->target,
           "reason", why.msg, NULL);
    c->prepared = false;
    bq_pq.PQreset(c->pg);
    if (bq_pq.PQstatus(c->pg) != CONNECTION_OK)
        return connect_fail(s, c->pg, "PQreset", err);
    return BQ_OK;
}

static bq_status prepare(const pg_storage *s, struct pgconn *c, bq_err *err)
{
    /* Every statement binduq runs finds rows by key. The batch ones join a few dozen rows
     * given as JSON with the table, and the planner, which guesses 100 for them and knows a
     * young table to be small, picked a hash join over a scan of the whole table: 17 ms
     * for 32 rows at 20,000 rows, where looping over the primary key takes 0.6 ms. This
     * session's statements do without hash and merge joins. A prepare that failed part way
     * (a statement the schema no longer fits) left the statements before it prepared: they
     * go first, so the next try starts clean rather than fail on "already exists" for the
     * session's life. */
    PGresult *set = bq_pq.PQexec(c->pg, "DEALLOCATE ALL; SET enable_hashjoin = off;"
                                        " SET enable_mergejoin = off");
    if (set == NULL || bq_pq.PQresultStatus(set) != PGRES_COMMAND_OK) {
        bq_status st = exec_fail(s, c->pg, set, "PQexec(SET enable_hashjoin)", err);
        bq_pq.PQclear(set);
        return st;
    }
    bq_pq.PQclear(set);
    for (int i = 0; i < ST_COUNT; i++) {
        if (s->sql[i] == NULL)
            continue;
        PGresult *res = bq_pq.PQprepare(c->pg, stmts[i].name, s->sql[i], stmts[i].nparams, NULL);
        if (res == NULL || bq_pq.PQresultStatus(res) != PGRES_COMMAND_OK) {
            char call[64];
            snprintf(call, sizeof call, "PQprepare(%s)", stmts[i].name);
            bq_status st = exec_fail(s, c->pg, res, call, err);
            bq_pq.PQclear(res);
            return st;
        }
        bq_pq.PQclear(res);
    }
    c->prepared = true;
    return BQ_OK;
}

/* Makes a borrowed connection ready for a statement: alive (reset if not) and prepared. */
static bq_status ready(const pg_storage *s, struct pgconn *c, bq_err *err)
{
    /* Reads what arrived while the connection was idle; a terminated backend's end of file
     * turns into CONNECTION_BAD here, before we send anything into a dead socket. */
    if (bq_pq.PQstatus(c->pg) == CONNECTION_OK)
        (void)bq_pq.PQconsumeInput(c->pg);
    if (bq_pq.PQstatus(c->pg) != CONNECTION_OK) {
        bq_status st = reconnect(s, c, err);
        if (st != BQ_OK)
            return st;
    }
    return c->prepared ? BQ_OK : prepare(s, c, err);
}

/* Lends a connection: an idle one, a new one while fewer than max exist, or the next one
 * returned within the timeout. */
static bq_status borrow(pg_storage *s, struct pgconn **out, bq_err *err)
{
    *out = NULL;
    double deadline = bq_now_mono() + s->timeout;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->nidle > 0) {
            *out = s->idle[--s->nidle];
            pthread_mutex_unlock(&s->mu);
            return BQ_OK;
        }
        if (s->total < s->max) {
            s->total++;
            pthread_mutex_unlock(&s->mu);
            struct pgconn *c = bq_calloc(1, sizeof *c);
            bq_status st = c == NULL ? bq_err_set(err, BQ_ENOMEM, "storage: out of memory")
                                     : pg_connect(s, c, err);
            if (st == BQ_OK) {
                *out = c;
                return BQ_OK;
            }
            bq_free(c);
            pthread_mutex_lock(&s->mu);
            s->total--;
            pthread_cond_signal(&s->cv); /* let a waiter try (or fail) itself */
            pthread_mutex_unlock(&s->mu);
            return st;
        }
        double left = deadline - bq_now_mono();
        if (left <= 0) {
            int max = s->max;
            pthread_mutex_unlock(&s->mu);
            return bq_err_set(err, BQ_ETIMEDOUT, "no PostgreSQL connection came free within "
                              "%.1f s (all %d of max_connections busy)", s->timeout, max);
        }
        bq_cond_wait_for(&s->cv, &s->mu, left);
    }
}

/* Takes a connection back: onto the idle stack if it is healthy and outside a transaction,
 * else closed. */
static void release(pg_storage *s, struct pgconn *c)
{
    if (c == NULL)
        return;
    if (bq_pq.PQstatus(c->pg) != CONNECTION_OK ||
        bq_pq.PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        conn_free(c);
        c = NULL;
    }
    pthread_mutex_lock(&s->mu);
    if (c != NULL)
        s->idle[s->nidle++] = c;
    else
        s->total--;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Runs prepared statement `stmt` (or, when stmt < 0, `sql`, called `what` in messages) with
 * n text parameters on a borrowed connection and expects result status `want`. A connection
 * lost on the way is reset and the statement run once more. On success *out holds the
 * result (PQclear it). */
static bq_status run(const pg_storage *s, struct pgconn *c, int stmt, const char *sql,
                     const char *what, int n, const char *const *vals, ExecStatusType want,
                     PGresult **out, bq_err *err)
{
    *out = NULL;
    for (int attempt = 0;; attempt++) {
        bq_status st = ready(s, c, err);
        if (st != BQ_OK)
            return st;
        PGresult *res = stmt >= 0
                            ? bq_pq.PQexecPrepared(c->pg, stmts[stmt].name, n, vals, NULL, NULL, 0)
                            : bq_pq.PQexecParams(c->pg, sql, n, NULL, vals, NULL, NULL, 0);
        if (res != NULL && bq_pq.PQresultStatus(res) == want) {
            *out = res;
            return BQ_OK;
        }
        if (attempt == 0 && connection_lost(c->pg, res)) {
            bq_pq.PQclear(res);
            continue;
        }
        char call[64];
        if (stmt >= 0)
            snprintf(call, sizeof call, "PQexecPrepared(%s)", stmts[stmt].name);
        else
            snprintf(call, sizeof call, "PQexecParams(%s)", what);
        st = exec_fail(s, c->pg, res, call, err);
        bq_pq.PQclear(res);
        return st;
    }
}

/* Borrows, runs, returns the connection: the whole life of a one-statement operation. */
static bq_status run1(pg_storage *s, int stmt, const char *sql, const char *what, int n,
                      const char *const *vals, ExecStatusType want, PGresult **out, bq_err *err)
{
    struct pgconn *c;
    *out = NULL;
    bq_status st = borrow(s, &c, err);
    if (st != BQ_OK)
        return st;
    st = run(s, c, stmt, sql, what, n, vals, want, out, err);
    release(s, c);
    return st;
}

/* ---- Records ------------------------------------------------------------------------------- */

static double micros_to_seconds(const char *v)
{
    return (double)strtoll(v, NULL, 10) / 1e6;
}

/* Copies row `row` of a REC_COLS result into r (zeroed first). False when out of memory
 * (r is then cleared). */
static bool row_to_rec(const PGresult *res, int row, struct bq_task_rec *r)
{
    memset(r, 0, sizeof *r);
    char **text[] = {&r->id,        &r->context_id, &r->state,    &r->queue,
                     &r->history,   &r->artifacts,  &r->metadata, &r->checkpoint,
                     &r->error,     &r->requested};
    for (int i = 0; i < (int)(sizeof text / sizeof text[0]); i++) {
        if (!bq_pq.PQgetisnull(res, row, i) &&
            (*text[i] = bq_strdup(bq_pq.PQgetvalue(res, row, i))) == NULL)
            goto oom;
    }
    if (!bq_pq.PQgetisnull(res, row, COL_WORKER) &&
        (r->worker = bq_strdup(bq_pq.PQgetvalue(res, row, COL_WORKER))) == NULL)
        goto oom;
    r->attempts = (int)strtol(bq_pq.PQgetvalue(res, row, COL_ATTEMPTS), NULL, 10);
    r->created_at = micros_to_seconds(bq_pq.PQgetvalue(res, row, COL_CREATED));
    r->updated_at = micros_to_seconds(bq_pq.PQgetvalue(res, row, COL_UPDATED));
    r->state_at = micros_to_seconds(bq_pq.PQgetvalue(res, row, COL_STATE_AT));
    return true;
oom:
    bq_task_rec_clear(r);
    return false;
}

/* Fills res from a (state, requested) row, or as "unknown task" when there is none. */
static void fill_result(struct bq_task_result *out, const PGresult *res, bool changed)
{
    memset(out, 0, sizeof *out);
    if (res == NULL || bq_pq.PQntuples(res) < 1)
        return;
    out->found = true;
    out->changed = changed;
    snprintf(out->state, sizeof out->state, "%s", bq_pq.PQgetvalue(res, 0, 0));
    snprintf(out->requested, sizeof out->requested, "%s", bq_pq.PQgetvalue(res, 0, 1));
    out->attempts = bq_pq.PQnfields(res) > 2 ? atoi(bq_pq.PQgetvalue(res, 0, 2)) : 0;
}

/* True if text, past leading white space, opens a JSON array. The server checks the rest. */
static bool looks_like_array(const char *text)
{
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    return *text == '[';
}

/* ---- Operations ---------------------------------------------------------------------------- */

static bq_status pg_create(bq_storage *base, const struct bq_task_new *t,
                           struct bq_task_result *out, bq_err *err)
{
    pg_storage *s = (pg_storage *)base;
    const char *state = t->state ? t->state : "submitted";
    memset(out, 0, sizeof *out);
    if (t->id == NULL || *t->id == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage create: a task needs an id");
    if (!bq_task_state_valid(state))
        return bq_err_set(err, BQ_EINVAL, "storage create: unknown state '%.30s'", state);
    char attempts[16];
    snprintf(attempts, sizeof attempts, "%d", t->attempts > 0 ? t->attempts : 0);
    const char *vals[] = {t->id,      t->context_id, state,     t->queue,    t->history,
                          t->metadata, t->worker,    attempts,  t->requested};
    struct pgconn *c;
    PGresult *res;
    bq_status st = borrow(s, &c, err);
    if (st != BQ_OK)
        return st;
    st = run(s, c, ST_CREATE, NULL, NULL, 9, vals, PGRES_TUPLES_OK, &res, err);
    if (st == BQ_OK && bq_pq.PQntuples(res) == 1) {
        fill_result(out, res, true);
    } else if (st == BQ_OK) {
        /* The id exists: report its state (a fresh statement sees the row that won). */
        bq_pq.PQclear(res);
        st = run(s, c, ST_STATE, NULL, NULL, 1, vals, PGRES_TUPLES_OK, &res, err);
        if (st == BQ_OK)
            fill_result(out, res, false);
    }
    bq_pq.PQclear(res);
    release(s, c);
    return st;
}

static bq_status pg_get(bq_storage *base, const char *id, struct bq_task_rec *out, bool *found,
                        bq_err *err)
{
    pg_storage *s = (pg_storage *)base;
    memset(out, 0, sizeof *out);
    *found = false;
    if (id == NULL)
        return bq_err_set(err, BQ_EINVAL, "storage get: no id");
    const char *vals[] = {id};
    PGresult *res;
    bq_status st = run1(s, ST_GET, NULL, NULL, 1, vals, PGRES_TUPLES_OK, &res, err);
    if (st != BQ_OK)
        return st;
    if (bq_pq.PQntuples(res) == 1) {
        if (row_to_rec(res, 0, out))
            *found = true;
        else
            st = bq_err_set(err, BQ_ENOMEM, "storage get: out of memory");
    }
    bq_pq.PQclear(res);
    return st;
}

static bq_status pg_change(bq_storage *base, const struct bq_task_change *c,
                           struct bq_task_result *out, bq_err *err)
{
    pg_storage *s = (pg_storage *)base;
    memset(out, 0, sizeof *out);
    if (c->id == NULL)
        return bq_err_set(err, BQ_EINVAL, "storage change: no id");
    if (c->to != NULL && !bq_task_state_valid(c->to))
        return bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
    if ((c->append_history && !looks_like_array(c->append_history)) ||
        (c->append_artifacts && !looks_like_array(c->append_artifacts)))
        return bq_err_set(err, BQ_EINVAL, "storage change: history and artifacts must be "
                          "JSON arrays");
    /* The same names bq_task_state_in accepts: split at commas, no trimming. */
    const char *vals[] = {c->id,         c->from ? c->from : PG_OPEN_STATES,
                          c->to,         c->append_history,
                          c->append_artifacts, c->checkpoint,
                          c->error,      c->requested,
                          c->worker,     c->count_attempt ? "1" : "0",
                          c->if_requested};
    struct pgconn *conn;
    PGresult *res;
    bq_status st = borrow(s, &conn, err);
    if (st != BQ_OK)
        return st;
    st = run(s, conn, ST_CHANGE, NULL, NULL, 11, vals, PGRES_TUPLES_OK, &res, err);
    if (st == BQ_OK && bq_pq.PQntuples(res) == 1) {
        fill_result(out, res, true);
    } else if (st == BQ_OK) {
        /* Refused (or unknown): report the state that refused it. */
        bq_pq.PQclear(res);
        st = run(s, conn, ST_STATE, NULL, NULL, 1, vals, PGRES_TUPLES_OK, &res, err);
        if (st == BQ_OK)
            fill_result(out, res, false);
    }
    bq_pq.PQclear(res);
    release(s, conn);
    return st;
}

/* Appends ,"key":"value" to a JSON object under construction; nothing for a NULL value (a
 * missing key is NULL to jsonb_to_recordset, as null is, in fewer bytes). No printf: a
 * batch of 64 changes writes 600 of these. */
static void json_field(bq_buf *b, const char *key, const char *v)
{
    if (v == NULL)
        return;
    bq_buf_puts(b, ",\"");
    bq_buf_puts(b, key);
    bq_buf_puts(b, "\":");
    bq_buf_json_str(b, v, strlen(v));
}

/* Reads the n rows of a batch statement (changed, id, state, requested, attempts, found)
 * into out, each at its id's place in ids[0..n) (distinct; rows usually come in their
 * order), and clears res. */
static bq_status batch_results(PGresult *res, const char *const *ids, size_t n,
                               struct bq_task_result *out, bq_err *err)
{
    int rows = bq_pq.PQntuples(res);
    bool seen[2 * BQ_CHANGE_MANY_MAX] = {false};
    if ((size_t)rows != n || n > 2 * BQ_CHANGE_MANY_MAX) {
        bq_pq.PQclear(res);
        return bq_err_set(err, BQ_EPROTO, "storage: a batch of %zu answered %d rows", n, rows);
    }
    for (int row = 0; row < rows; row++) {
        const char *id = bq_pq.PQgetvalue(res, row, 1);
        size_t i = (size_t)row, k = 0;
        while (k < n && (seen[i] || strcmp(ids[i], id) != 0)) {
            i = (i + 1) % n;
            k++;
        }
        if (k == n) {
            bq_pq.PQclear(res);
            return bq_err_set(err, BQ_EPROTO, "storage: a batch answered for a task it was not given");
        }
        seen[i] = true;
        out[i].changed = strcmp(bq_pq.PQgetvalue(res, row, 0), "t") == 0;
        out[i].found = strcmp(bq_pq.PQgetvalue(res, row, 5), "t") == 0;
        if (out[i].found) {
            snprintf(out[i].state, sizeof out[i].state, "%s", bq_pq.PQgetvalue(res, row, 2));
            snprintf(out[i].requested, sizeof out[i].requested, "%s",
                     bq_pq.PQgetvalue(res, row, 3));
            out[i].attempts = atoi(bq_pq.PQgetvalue(res, row, 4));
        }
    }
    bq_pq.PQclear(res);
    return BQ_OK;
}

/* Runs batch statement stmt with the JSON arrays b[0..nb) (freed here) of the tasks
 * ids[0..n) and reads its n rows. */
static bq_status run_batch(pg_storage *s, int stmt, bq_buf *b, int nb, const char *const *ids,
                           size_t n, struct bq_task_result *out, bq_err *err)
{
    const char *vals[2];
    bool oom = false;
    for (int i = 0; i < nb; i++) {
        oom |= b[i].oom;
        vals[i] = b[i].p;
    }
    bq_status st = BQ_OK;
    PGresult *res = NULL;
    if (oom)
        st = bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    else
        st = run1(s, stmt, NULL, NULL, nb, vals, PGRES_TUPLES_OK, &res, err);
    for (int i = 0; i < nb; i++)
        bq_buf_free(&b[i]);
    return st != BQ_OK ? st : batch_results(res, ids, n, out, err);
}

/* The JSON array of bq_change_many for changes[0..n), their ids into ids. */
static bq_status changes_json(const struct bq_task_change *changes, size_t n, bq_buf *b,
                              const char **ids, bq_err *err)
{
    if (n > BQ_CHANGE_MANY_MAX)
        return bq_err_set(err, BQ_EINVAL, "storage change_many: at most %d tasks", BQ_CHANGE_MANY_MAX);
    bq_buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const struct bq_task_change *c = &changes[i];
        if (c->id == NULL)
            return bq_err_set(err, BQ_EINVAL, "storage change: no id");
        if (c->to != NULL && !bq_task_state_valid(c->to))
            return bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
        if ((c->append_history && !looks_like_array(c->append_history)) ||
            (c->append_artifacts && !looks_like_array(c->append_artifacts)))
            return bq_err_set(err, BQ_EINVAL, "storage change: history and artifacts must be "
                              "JSON arrays");
        ids[i] = c->id;
        bq_buf_puts(b, i ? ",{\"n\":" : "{\"n\":");
        bq_buf_putc(b, c->count_attempt ? '1' : '0');
        json_field(b, "id", c->id);
        json_field(b, "f", c->from ? c->from : PG_OPEN_STATES);
        json_field(b, "t", c->to);
        json_field(b, "h", c->append_history);
        json_field(b, "a", c->append_artifacts);
        json_field(b, "k", c->checkpoint);
        json_field(b, "e", c->error);
        json_field(b, "r", c->requested);
        json_field(b, "w", c->worker);
        bq_buf_putc(b, '}');
    }
    bq_buf_putc(b, ']');
    return BQ_OK;
}

/* The JSON array of bq_start_many for tasks[0..n), their ids into ids. */
static bq_status starts_json(const struct bq_task_new *tasks, size_t n, bq_buf *b,
                             const char **ids, bq_err *err)
{
    if (n > BQ_CHANGE_MANY_MAX)
        return bq_err_set(err, BQ_EINVAL, "storage start_many: at most %d tasks", BQ_CHANGE_MANY_MAX);
    bq_buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const struct bq_task_new *t = &tasks[i];
        if (t->id == NULL || *t->id == '\0')
            return bq_err_set(err, BQ_EINVAL, "storage start: a task needs an id");
        ids[i] = t->id;
        bq_buf_puts(b, i ? ",{\"id\":" : "{\"id\":");
        bq_buf_json_str(b, t->id, strlen(t->id));
        json_field(b, "ctx", t->context_id);
        json_field(b, "q", t->queue);
        json_field(b, "h", t->history);
        json_field(b, "m", t->metadata);
        json_field(b, "w", t->worker);
        bq_buf_putc(b, '}');
    }
    bq_buf_putc(b, ']');
    return BQ_OK;
}

static bq_status pg_change_many(bq_storage *base, const struct bq_task_change *changes,
                                size_t n, struct bq_task_result *out, bq_err *err)
{
    const char *ids[BQ_CHANGE_MANY_MAX];
    bq_buf b = BQ_BUF_INIT;
    memset(out, 0, n * sizeof *out);
    bq_status st = changes_json(changes, n, &b, ids, err);
    if (st != BQ_OK) {
        bq_buf_free(&b);
        return st;
    }
    return run_batch((pg_storage *)base, ST_CHANGE_MANY, &b, 1, ids, n, out, err);
}

static bq_status pg_start_many(bq_storage *base, const struct bq_task_new *tasks, size_t n,
                               struct bq_task_result *out, bq_err *err)
{
    const char *ids[BQ_CHANGE_MANY_MAX];
    bq_buf b = BQ_BUF_INIT;
    memset(out, 0, n * sizeof *out);
    bq_status st = starts_json(tasks, n, &b, ids, err);
    if (st != BQ_OK) {
        bq_buf_free(&b);
        return st;
    }
    return run_batch((pg_storage *)base, ST_START_MANY, &b, 1, ids, n, out, err);
}

/* Both in one statement (bq_storage_change_start_many checked the ids are distinct). */
static bq_status pg_change_start_many(bq_storage *base, const struct bq_task_change *changes,
                                      size_t nc, const struct bq_task_new *tasks, size_t nt,
                                      struct bq_task_result *rc, struct bq_task_result *rt,
                                      bq_err *err)
{
    const char *ids[2 * BQ_CHANGE_MANY_MAX];
    struct bq_task_result res[2 * BQ_CHANGE_MANY_MAX];
    bq_buf b[2] = {BQ_BUF_INIT, BQ_BUF_INIT};
    bq_status st = changes_json(changes, nc, &b[0], ids, err);
    if (st == BQ_OK)
        st = starts_json(tasks, nt, &b[1], ids + nc, err);
    if (st != BQ_OK) {
        bq_buf_free(&b[0]);
        bq_buf_free(&b[1]);
        return st;
    }
    memset(res, 0, (nc + nt) * sizeof *res);
    st = run_batch((pg_storage *)base, ST_CHANGE_START_MANY, b, 2, ids, nc + nt, res, err);
    if (st == BQ_OK) {
        memcpy(rc, res, nc * sizeof *rc);
        memcpy(rt, res + nc, nt * sizeof *rt);
    }
    return st;
}

static bq_status pg_list(bq_storage *base, const struct bq_task_filter *f,
                         struct bq_task_rec **out, size_t *n, bq_err *err)
{
    pg_storage *s = (pg_storage *)base;
    static const struct bq_task_filter none = {NULL, NULL, 0, 0, 0};
    *out = NULL;
    *n = 0;
    if (f == NULL)
        f = &none;
    /* Fixed fragments and $n placeholders only: the values travel as parameters. */
    const char *vals[5];
    int np = 0;
    char older[32], limit[16], offset[16];
    /* The head, the schema and at most four fragments of under 80 bytes each. */
    size_t len = sizeof("SELECT " REC_COLS " FROM .tasks WHERE true") + strlen(s->qschema) + 512;
    char *sql = bq_malloc(len);
    if (sql == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    size_t k = (size_t)snprintf(sql, len, "SELECT " REC_COLS " FROM %s.%s WHERE true",
                                s->qschema, s->bindu ? "binduq_tasks" : "tasks");
    if (f->state != NULL) {
        vals[np++] = f->state;
        k += (size_t)snprintf(sql + k, len - k, " AND state = $%d::text", np);
    }
    if (f->context_id != NULL) {
        vals[np++] = f->context_id;
        k += (size_t)snprintf(sql + k, len - k, " AND context_id = $%d::text", np);
    }
    if (f->older_than > 0) {
        snprintf(older, sizeof older, "%lld", (long long)llround(f->older_than * 1e6));
        vals[np++] = older;
        k += (size_t)snprintf(sql + k, len - k,
                              " AND state_at < now() - $%d::int8 * interval '1 microsecond'", np);
    }
    snprintf(limit, sizeof limit, "%d", f->limit > 0 ? f->limit : 100);
    vals[np++] = limit;
    snprintf(offset, sizeof offset, "%d", f->offset > 0 ? f->offset : 0);
    vals[np++] = offset;
    snprintf(sql + k, len - k, " ORDER BY created_at DESC, id LIMIT $%d::int OFFSET $%d::int",
             np - 1, np);

    PGresult *res;
    bq_status st = run1(s, -1, sql, "list", np, vals, PGRES_TUPLES_OK, &res, err);
    bq_free(sql);
    if (st != BQ_OK)
        return st;
    int rows = bq_pq.PQntuples(res);
    struct bq_task_rec *v = rows > 0 ? bq_calloc((size_t)rows, sizeof *v) : NULL;
    if (rows > 0 && v == NULL) {
        bq_pq.PQclear(res);
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    }
    for (int i = 0; i < rows; i++) {
        if (!row_to_rec(res, i, &v[i])) {
            bq_task_recs_free(v, (size_t)i);
            bq_pq.PQclear(res);
            return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
        }
    }
    bq_pq.PQclear(res);
    *out = v;
    *n = (size_t)rows;
    return BQ_OK;
}

static bq_status pg_remove(bq_storage *base, const char *id, bool *found, bq_err *err)
{
    pg_storage *s = (pg_storage *)base;
    *found = false;
    if (id == NULL)
        return bq_err_set(err, BQ_EINVAL, "storage remove: no id");
    const char *vals[] = {id};
    PGresult *res;
    bq_status st = run1(s, ST_REMOVE, NULL, NULL, 1, vals, PGRES_TUPLES_OK, &res, err);
    if (st != BQ_OK)
        return st;
    *found = bq_pq.PQntuples(res) == 1;
    bq_pq.PQclear(res);
    return BQ_OK;
}

static bq_status pg_ping(bq_storage *base, bq_err *err)
{
    PGresult *res;
    bq_status st = run1((pg_storage *)base, -1, "SELECT 1", "ping", 0, NULL, PGRES_TUPLES_OK,
                        &res, err);
    bq_pq.PQclear(res);
    return st;
}

/* Closes every connection and frees the storage. No operation may be running. */
static void pg_destroy(bq_storage *base)
{
    pg_storage *s = (pg_storage *)base;
    if (s == NULL)
        return;
    for (int i = 0; i < s->nidle; i++)
        conn_free(s->idle[i]);
    bq_free(s->idle);
    for (int i = 0; i < ST_COUNT; i++)
        bq_free(s->sql[i]);
    for (size_t i = 0; i < s->url.nsecrets; i++)
        memset(s->url.values[i], 0, strlen(s->url.values[i]));
    bq_pg_url_free(&s->url);
    bq_free(s->schema);
    bq_free(s->qschema);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    bq_free(s);
}

static const struct bq_storage_ops pg_ops = {
    "postgres", pg_create, pg_get, pg_change, pg_list, pg_remove, pg_ping, pg_destroy,
    pg_change_many, pg_start_many, NULL, pg_change_start_many,
};
/* The "bindu" layout changes a task at a time (its trigger does the compare-and-set). */
static const struct bq_storage_ops pg_bindu_ops = {
    "postgres", pg_create, pg_get, pg_change, pg_list, pg_remove, pg_ping, pg_destroy,
    NULL, NULL, NULL, NULL,
};

/* A copy of s with every `from` replaced by `to` (s is freed). */
static char *replace_all(char *s, const char *from, const char *to)
{
    if (s == NULL)
        return NULL;
    bq_buf b = BQ_BUF_INIT;
    size_t fl = strlen(from);
    for (const char *p = s;;) {
        const char *at = strstr(p, from);
        bq_buf_append(&b, p, at ? (size_t)(at - p) : strlen(p));
        if (at == NULL)
            break;
        bq_buf_puts(&b, to);
        p = at + fl;
    }
    bq_free(s);
    return bq_buf_detach(&b, NULL);
}

/* ---- Opening ------------------------------------------------------------------------------- */

/* A copy of tmpl with every "@S" replaced by qschema. */
static char *fill_schema(const char *tmpl, const char *qschema)
{
    size_t count = 0, ql = strlen(qschema);
    for (const char *p = strstr(tmpl, "@S"); p != NULL; p = strstr(p + 2, "@S"))
        count++;
    char *out = bq_malloc(strlen(tmpl) + count * ql + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (const char *p = tmpl;;) {
        const char *at = strstr(p, "@S");
        size_t n = at ? (size_t)(at - p) : strlen(p);
        memcpy(o, p, n);
        o += n;
        if (at == NULL)
            break;
        memcpy(o, qschema, ql);
        o += ql;
        p = at + 2;
    }
    *o = '\0';
    return out;
}

/* Runs a statement of the migration (no parameters, any number of commands). */
static bq_status migrate_exec(const pg_storage *s, PGconn *pg, const char *tmpl,
                              ExecStatusType want, PGresult **out, bq_err *err)
{
    char *sql = fill_schema(tmpl, s->qschema);
    if (sql == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    PGresult *res = bq_pq.PQexec(pg, sql);
    bq_free(sql);
    if (res == NULL || bq_pq.PQresultStatus(res) != want) {
        bq_status st = exec_fail(s, pg, res, "PQexec(migrate)", err);
        bq_pq.PQclear(res);
        return st;
    }
    if (out != NULL)
        *out = res;
    else
        bq_pq.PQclear(res);
    return BQ_OK;
}

/* The body of the migrating transaction (see the top of the file). */
static bq_status migrate_locked(const pg_storage *s, PGconn *pg, bq_err *err)
{
    char key[128], regclass[192];
    const char *vt = s->bindu ? "binduq_schema_version" : "schema_version";
    const char *const *migs = s->bindu ? bindu_migrations : migrations;
    int latest = s->bindu ? PG_BINDU_VERSION : PG_SCHEMA_VERSION;
    snprintf(key, sizeof key, "binduq:%s", s->schema);
    snprintf(regclass, sizeof regclass, "%s.%s", s->qschema, vt);
    const char *lock_vals[] = {key};
    PGresult *res = bq_pq.PQexecParams(pg, "SELECT pg_advisory_xact_lock(hashtext($1::text))",
                                       1, NULL, lock_vals, NULL, NULL, 0);
    if (res == NULL || bq_pq.PQresultStatus(res) != PGRES_TUPLES_OK) {
        bq_status st = exec_fail(s, pg, res, "PQexecParams(pg_advisory_xact_lock)", err);
        bq_pq.PQclear(res);
        return st;
    }
    bq_pq.PQclear(res);

    /* Look before creating: CREATE ... IF NOT EXISTS checks privileges first. */
    const char *look_vals[] = {s->schema, regclass};
    res = bq_pq.PQexecParams(pg,
                             "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text), "
                             "to_regclass($2::text) IS NOT NULL",
                             2, NULL, look_vals, NULL, NULL, 0);
    if (res == NULL || bq_pq.PQresultStatus(res) != PGRES_TUPLES_OK || bq_pq.PQntuples(res) != 1) {
        bq_status st = exec_fail(s, pg, res, "PQexecParams(migrate)", err);
        bq_pq.PQclear(res);
        return st;
    }
    bool have_schema = strcmp(bq_pq.PQgetvalue(res, 0, 0), "t") == 0;
    bool have_version = strcmp(bq_pq.PQgetvalue(res, 0, 1), "t") == 0;
    bq_pq.PQclear(res);
    bq_status st = BQ_OK;
    if (!have_schema)
        st = migrate_exec(s, pg, "CREATE SCHEMA @S", PGRES_COMMAND_OK, NULL, err);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE TABLE @S.%s (version int NOT NULL)", vt);
    if (st == BQ_OK && !have_version)
        st = migrate_exec(s, pg, sql, PGRES_COMMAND_OK, NULL, err);
    snprintf(sql, sizeof sql, "SELECT max(version), count(*) FROM @S.%s", vt);
    if (st == BQ_OK)
        st = migrate_exec(s, pg, sql, PGRES_TUPLES_OK, &res, err);
    if (st != BQ_OK)
        return st;
    int version = bq_pq.PQgetisnull(res, 0, 0) ? 0 : atoi(bq_pq.PQgetvalue(res, 0, 0));
    long rows = atol(bq_pq.PQgetvalue(res, 0, 1));
    bq_pq.PQclear(res);
    for (int v = version; st == BQ_OK && v < latest; v++)
        st = migrate_exec(s, pg, migs[v], PGRES_COMMAND_OK, NULL, err);
    if (st != BQ_OK || version >= latest)
        return st;
    if (rows == 0)
        snprintf(sql, sizeof sql, "INSERT INTO @S.%s (version) VALUES (%d)", vt, latest);
    else
        snprintf(sql, sizeof sql, "UPDATE @S.%s SET version = %d", vt, latest);
    return migrate_exec(s, pg, sql, PGRES_COMMAND_OK, NULL, err);
}

/* Creates or migrates the schema in one transaction. */
static bq_status migrate(const pg_storage *s, PGconn *pg, bq_err *err)
{
    PGresult *res = bq_pq.PQexec(pg, "BEGIN");
    if (res == NULL || bq_pq.PQresultStatus(res) != PGRES_COMMAND_OK) {
        bq_status st = exec_fail(s, pg, res, "PQexec(BEGIN)", err);
        bq_pq.PQclear(res);
        return st;
    }
    bq_pq.PQclear(res);
    bq_status st = migrate_locked(s, pg, err);
    res = bq_pq.PQexec(pg, st == BQ_OK ? "COMMIT" : "ROLLBACK");
    if (st == BQ_OK && (res == NULL || bq_pq.PQresultStatus(res) != PGRES_COMMAND_OK))
        st = exec_fail(s, pg, res, "PQexec(COMMIT)", err);
    bq_pq.PQclear(res);
    if (st != BQ_OK)
        bq_err_prefix(err, "storage: creating the schema");
    return st;
}

/* Reads host, port and database out of the URL (libpq's parser), for the target named in
 * messages. The URL holds no secret (bq_pg_url_split), so libpq's complaint about it, which
 * quotes the part it could not read, is passed on (scrubbed all the same). */
static bq_status describe_url(pg_storage *s, bq_err *err)
{
    char *perr = NULL;
    PQconninfoOption *opts = bq_pq.PQconninfoParse(s->url.url, &perr);
    if (opts == NULL) {
        char text[160];
        flatten(perr ? perr : "out of memory", text, sizeof text);
        bq_pq.PQfreemem(perr);
        bq_err_set(err, BQ_EINVAL, "PQconninfoParse: malformed PostgreSQL URL: %s", text);
        return scrub(s, err);
    }
    const char *host = NULL, *port = NULL, *db = NULL, *user = NULL;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        if (strcmp(o->keyword, "host") == 0 ||
            (host == NULL && strcmp(o->keyword, "hostaddr") == 0))
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
    }
    snprintf(s->target, sizeof s->target, "%.60s:%.20s/%.60s", host ? host : "localhost",
             port ? port : "5432", db ? db : (user ? user : "postgres"));
    bq_pq.PQconninfoFree(opts);
    return BQ_OK;
}

/* Opens the PostgreSQL storage: parses cfg->url, connects once, creates or migrates the
 * schema, prepares the statements. Errors: BQ_EINVAL (configuration), BQ_EAUTH,
 * BQ_ECONNREFUSED, BQ_ETIMEDOUT, BQ_ENOTFOUND, BQ_EIO (connecting), BQ_EPG (the migration),
 * BQ_ENOMEM. On success *out holds one reference (bq_storage_unref). */
bq_status bq_storage_pg_open(const struct bq_storage_config *cfg, bq_storage **out,
                             bq_err *err)
{
    *out = NULL;
    if (cfg == NULL || cfg->url == NULL || cfg->url[0] == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage: PostgreSQL needs a url");
    if (bq_pq_load(err) != BQ_OK)
        return BQ_EINVAL;
    const char *schema = cfg->schema ? cfg->schema : PG_DEFAULT_SCHEMA;
    bool bindu = cfg->layout != NULL && strcmp(cfg->layout, "bindu") == 0;
    if (cfg->layout != NULL && !bindu && strcmp(cfg->layout, "binduq") != 0)
        return bq_err_set(err, BQ_EINVAL, "storage: layout must be \"binduq\" or \"bindu\" "
                          "(got '%.20s')", cfg->layout);
    if (bindu && cfg->schema == NULL)
        return bq_err_set(err, BQ_EINVAL, "storage: the bindu layout needs the schema of the "
                          "agent's tables (storage.schema, or POSTGRES_DID)");
    if (schema[0] == '\0' || strlen(schema) > 63)
        return bq_err_set(err, BQ_EINVAL, "storage: schema name must be 1 to 63 bytes long");
    /* The bindu layout's functions are written in $f$...$f$ bodies that name the schema: a
     * '$' in it could end a body early. A DID's schema never has one. */
    if (bindu && strchr(schema, '$') != NULL)
        return bq_err_set(err, BQ_EINVAL, "storage: schema name '%s' has a '$', which the bindu "
                          "layout does not take (storage.schema)", schema);
    pg_storage *s = bq_calloc(1, sizeof *s);
    if (s == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    s->max = cfg->max_connections > 0 ? cfg->max_connections : PG_DEFAULT_MAX;
    s->timeout = cfg->connect_timeout > 0 ? cfg->connect_timeout : PG_DEFAULT_TIMEOUT;
    snprintf(s->timeout_str, sizeof s->timeout_str, "%d",
             s->timeout > 86400 ? 86400 : (int)ceil(s->timeout));
    pthread_mutex_init(&s->mu, NULL);
    bq_cond_init(&s->cv);
    s->idle = bq_calloc((size_t)s->max, sizeof *s->idle);
    s->schema = bq_strdup(schema);
    s->bindu = bindu;
    if (s->idle == NULL || s->schema == NULL) {
        pg_destroy(&s->base);
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    }
    bq_status st = bq_pg_url_split(cfg->url, cfg->url_name ? cfg->url_name : "storage url", &s->url,
                                   err);
    if (st == BQ_OK)
        st = describe_url(s, err);
    if (st != BQ_OK) {
        pg_destroy(&s->base);
        return st;
    }

    /* The first connection: quotes the schema name (PQescapeIdentifier needs the session's
     * encoding), migrates, then joins the pool. */
    struct pgconn *c = bq_calloc(1, sizeof *c);
    st = c ? pg_connect(s, c, err) : bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    if (st == BQ_OK) {
        char *q = bq_pq.PQescapeIdentifier(c->pg, s->schema, strlen(s->schema));
        if (q == NULL) {
            char text[160];
            flatten(bq_pq.PQerrorMessage(c->pg), text, sizeof text);
            st = bq_err_set(err, BQ_EINVAL, "PQescapeIdentifier: bad schema name: %s", text);
        } else {
            s->qschema = bq_strdup(q);
            bq_pq.PQfreemem(q);
            char table[160], view[176];
            snprintf(table, sizeof table, "%s.tasks ", s->qschema ? s->qschema : "");
            snprintf(view, sizeof view, "%s.binduq_tasks ", s->qschema ? s->qschema : "");
            bool oom = s->qschema == NULL;
            for (int i = 0; !oom && i < ST_COUNT; i++) {
                if (s->bindu && (i == ST_CHANGE_MANY || i == ST_START_MANY || i == ST_CHANGE_START_MANY))
                    continue; /* one task at a time on the view */
                s->sql[i] = fill_schema(stmts[i].sql, s->qschema);
                if (s->bindu)
                    s->sql[i] = replace_all(replace_all(s->sql[i], table, view),
                                            " ON CONFLICT (id) DO NOTHING", "");
                oom = s->sql[i] == NULL;
            }
            if (oom)
                st = bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
        }
    }
    if (st == BQ_OK)
        st = migrate(s, c->pg, err);
    if (st == BQ_OK)
        st = prepare(s, c, err);
    if (st != BQ_OK) {
        conn_free(c);
        pg_destroy(&s->base);
        return st;
    }
    s->idle[s->nidle++] = c;
    s->total = 1;
    s->base.ops = s->bindu ? &pg_bindu_ops : &pg_ops;
    atomic_init(&s->base.refs, 1);
    *out = &s->base;
    return BQ_OK;
}
