"""labeling_submit(): the write of a submission (labeling.services.rankings) as one Postgres function, so a
`submit` needs no BEGIN / COMMIT round trips: Python reads the assignment without a lock and validates the ranking,
then the function locks the assignment and comparison rows (assignment first, the order of every writer), checks
that what Python validated still holds (leased to this annotator, the same lease start and display order) and that
the lease is live, and writes the ranking, the assignment's state and the comparison's completion. When any check
fails it writes nothing and returns no row: the caller then takes the transactional Python path, which decides and
words the refusal under the lock. Each statement inside takes a fresh snapshot (VOLATILE, READ COMMITTED), so the
completion count sees the ranking just inserted and every one committed before the lock. Postgres only."""

from django.db import migrations

from labeling.migrations._postgres import postgres_only

CREATE = """
CREATE OR REPLACE FUNCTION labeling_submit(
    p_assignment bigint, p_annotator bigint, p_leased_at timestamptz, p_display_order jsonb, p_now timestamptz,
    p_overlap integer, p_ranks jsonb, p_both_bad boolean, p_flags jsonb, p_rationale text,
    p_seconds_spent double precision, p_created_at timestamptz
) RETURNS TABLE (ranking_id bigint, completed boolean)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    held record;
    new_id bigint;
BEGIN
    SELECT a.state, a.annotator_id, a.leased_at, a.leased_until, a.display_order, a.comparison_id INTO held
    FROM labeling_assignment a JOIN labeling_comparison c ON c.id = a.comparison_id
    WHERE a.id = p_assignment FOR UPDATE OF a, c;
    IF NOT FOUND OR held.state <> 'leased' OR held.annotator_id <> p_annotator OR held.leased_at <> p_leased_at
       OR held.display_order <> p_display_order OR held.leased_until <= p_now THEN
        RETURN;
    END IF;
    INSERT INTO labeling_ranking (comparison_id, annotator_id, assignment_id, ranks, both_bad, flags, rationale,
                                  seconds_spent, display_order, created_at)
    VALUES (held.comparison_id, p_annotator, p_assignment, p_ranks, p_both_bad, p_flags, p_rationale,
            p_seconds_spent, p_display_order, p_created_at)
    RETURNING id INTO new_id;
    UPDATE labeling_assignment SET state = 'submitted', finished_at = p_now WHERE id = p_assignment;
    UPDATE labeling_comparison SET status = 'complete'
    WHERE id = held.comparison_id AND status <> 'complete' AND NOT is_gold
    AND (SELECT COUNT(*) FROM labeling_ranking r WHERE r.comparison_id = held.comparison_id) >= p_overlap;
    ranking_id := new_id;
    completed := FOUND;
    RETURN NEXT;
END
$fn$;
"""
DROP = (
    "DROP FUNCTION IF EXISTS labeling_submit(bigint, bigint, timestamptz, jsonb, timestamptz, integer, jsonb, "
    "boolean, jsonb, text, double precision, timestamptz);"
)


class Migration(migrations.Migration):
    dependencies = [("labeling", "0009_lease_regular_function")]

    operations = [postgres_only(CREATE, DROP)]
