-- Issue 16: a reply's copy in the store's own mailbox proves it was delivered.
--
-- Every reply goes out with one extra envelope recipient, the store's support address (not in
-- the headers), in the same SMTP transaction as the customer's: the server accepts the DATA for
-- all recipients at once, so a copy in the mailbox means the customer's delivery was accepted
-- too. When fetch reads that copy, ingest_messages calls this function instead of storing it.

-- The reply whose smtp_message_id this copy carries becomes `sent` when it was left `sending`
-- (a worker died between the SMTP hand-off and the bookkeeping) or held as
-- `delivery_in_doubt`; any other state is left alone (a draft a person holds for another reason
-- was never handed to SMTP, so it has no copy). Returns the reply's id and status after the call,
-- or null when the Message-ID is not one of this store's replies. The job, if still open, finds
-- the reply `sent` on its next attempt and completes without sending.
create or replace function public.confirm_reply_by_copy(
  p_store_id uuid,
  p_smtp_message_id text,
  p_detail jsonb default '{}'::jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_reply public.replies;
begin
  select * into v_reply from public.replies
  where store_id = p_store_id and smtp_message_id = btrim(p_smtp_message_id)
  for update;
  if not found then
    return null;
  end if;
  if v_reply.status = 'sending'
     or (v_reply.status = 'held' and v_reply.hold_reason = 'delivery_in_doubt') then
    update public.replies
    set status = 'sent', sent_at = now(), sending_at = coalesce(sending_at, now()),
        hold_reason = null, error = null
    where id = v_reply.id;
    insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
    values (v_reply.store_id, v_reply.job_id, v_reply.conversation_id, v_reply.message_id,
            'reply.confirmed_by_copy',
            coalesce(p_detail, '{}'::jsonb)
              || jsonb_build_object('reply_id', v_reply.id,
                                    'smtp_message_id', v_reply.smtp_message_id,
                                    'previous_status', v_reply.status));
    return jsonb_build_object('reply_id', v_reply.id, 'status', 'sent',
                              'previous_status', v_reply.status);
  end if;
  return jsonb_build_object('reply_id', v_reply.id, 'status', v_reply.status,
                            'previous_status', v_reply.status);
end;
$$;

revoke all on function public.confirm_reply_by_copy(uuid, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.confirm_reply_by_copy(uuid, text, jsonb) to service_role;
