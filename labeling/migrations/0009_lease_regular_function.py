"""labeling_lease_regular(): the regular lease (labeling.services.leasing._lease_regular) as one Postgres function,
so a `next` takes its lease in one statement in autocommit instead of BEGIN, the locked candidate, the take and
COMMIT. The steps are the Python path's, statement for statement; a VOLATILE plpgsql function takes a fresh snapshot
for each statement inside it (READ COMMITTED), so the slot recount after the row lock sees every lease and
submission committed before the lock, as the Python path's separate statements do. Postgres only: SQLite keeps the
Python path (tests hold both to the same behaviour and concurrency guarantees)."""

from django.db import migrations

from labeling.migrations._postgres import postgres_only

# Parameters: project, annotator, now, lease end, overlap, how many locked candidates to inspect at most.
# Returns the assignment taken (its id, its display order: a revived lease keeps its own) and its comparison, or no
# row when nothing could be leased.
CREATE = """
CREATE OR REPLACE FUNCTION labeling_lease_regular(
    p_project bigint, p_annotator bigint, p_now timestamptz, p_until timestamptz, p_overlap integer,
    p_max_candidates integer
) RETURNS TABLE (assignment_id bigint, display_order jsonb, comparison_id bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    inspected bigint[] := '{}';
    wait boolean;
    found_id bigint;
    found_status varchar;
    shuffled jsonb;
    taken_id bigint;
    taken_order jsonb;
BEGIN
    -- First pass skips rows other annotators hold; the second (only when the first locked nothing) waits for
    -- them, so a busy moment is not mistaken for an empty queue. Holding no lock yet, that wait cannot deadlock.
    FOREACH wait IN ARRAY ARRAY[false, true] LOOP
        IF wait AND cardinality(inspected) > 0 THEN
            RETURN;
        END IF;
        WHILE cardinality(inspected) < p_max_candidates LOOP
            -- The candidate statement of leasing._CANDIDATE_SQL (queue order inside a planning fence).
            IF wait THEN
                SELECT c.id, c.status INTO found_id, found_status
                FROM (SELECT q.id, q.priority FROM labeling_comparison q WHERE q.project_id = p_project
                      AND q.status = 'open' AND NOT q.is_gold AND q.id <> ALL (inspected)
                      ORDER BY q.priority DESC, q.id OFFSET 0) o
                JOIN labeling_comparison c ON c.id = o.id
                WHERE NOT EXISTS (SELECT 1 FROM labeling_assignment d WHERE d.comparison_id = c.id
                                  AND d.annotator_id = p_annotator AND d.state IN ('submitted', 'skipped'))
                AND (SELECT COUNT(*) FROM labeling_assignment s WHERE s.comparison_id = c.id
                     AND s.annotator_id <> p_annotator
                     AND (s.state = 'submitted' OR (s.state = 'leased' AND s.leased_until > p_now))) < p_overlap
                ORDER BY o.priority DESC, o.id LIMIT 1 FOR UPDATE OF c;
            ELSE
                SELECT c.id, c.status INTO found_id, found_status
                FROM (SELECT q.id, q.priority FROM labeling_comparison q WHERE q.project_id = p_project
                      AND q.status = 'open' AND NOT q.is_gold AND q.id <> ALL (inspected)
                      ORDER BY q.priority DESC, q.id OFFSET 0) o
                JOIN labeling_comparison c ON c.id = o.id
                WHERE NOT EXISTS (SELECT 1 FROM labeling_assignment d WHERE d.comparison_id = c.id
                                  AND d.annotator_id = p_annotator AND d.state IN ('submitted', 'skipped'))
                AND (SELECT COUNT(*) FROM labeling_assignment s WHERE s.comparison_id = c.id
                     AND s.annotator_id <> p_annotator
                     AND (s.state = 'submitted' OR (s.state = 'leased' AND s.leased_until > p_now))) < p_overlap
                ORDER BY o.priority DESC, o.id LIMIT 1 FOR UPDATE OF c SKIP LOCKED;
            END IF;
            EXIT WHEN NOT FOUND;
            inspected := inspected || found_id;
            CONTINUE WHEN found_status <> 'open';
            -- A random display order against position bias (the Python path shuffles the same ids).
            SELECT jsonb_agg(cr.response_id ORDER BY random()) INTO shuffled
            FROM labeling_comparisonresponse cr WHERE cr.comparison_id = found_id;
            -- leasing._TAKE_SQL: the slots recounted by this fresh statement now that the row is locked, this
            -- annotator's expired lease revived (keeping its order).
            INSERT INTO labeling_assignment AS a (comparison_id, annotator_id, project_id, state, leased_at,
                                                  leased_until, display_order, skip_reason, finished_at)
            SELECT found_id, p_annotator, p_project, 'leased', p_now, p_until, shuffled, '', NULL
            WHERE NOT EXISTS (SELECT 1 FROM labeling_assignment d WHERE d.comparison_id = found_id
                              AND d.annotator_id = p_annotator AND d.state IN ('submitted', 'skipped'))
            AND (SELECT COUNT(*) FROM labeling_assignment s WHERE s.comparison_id = found_id
                 AND s.annotator_id <> p_annotator
                 AND (s.state = 'submitted' OR (s.state = 'leased' AND s.leased_until > p_now))) < p_overlap
            ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET state = excluded.state,
                leased_at = excluded.leased_at, leased_until = excluded.leased_until WHERE a.state = 'leased'
            RETURNING a.id, a.display_order INTO taken_id, taken_order;
            IF FOUND THEN
                assignment_id := taken_id;
                display_order := taken_order;
                comparison_id := found_id;
                RETURN NEXT;
                RETURN;
            END IF;
        END LOOP;
    END LOOP;
END
$fn$;
"""
DROP = "DROP FUNCTION IF EXISTS labeling_lease_regular(bigint, bigint, timestamptz, timestamptz, integer, integer);"


class Migration(migrations.Migration):
    dependencies = [("labeling", "0008_merge_exports_and_registry")]

    operations = [postgres_only(CREATE, DROP)]
