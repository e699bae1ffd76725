"""ConvertId (exchangelib's version probe) and ResolveNames."""

from __future__ import annotations

from lxml import etree

from .folders import known_mailboxes
from .registry import Context, EwsError, m, operation, t
from .soap import error_message, new_response, ok_message, require


@operation("ConvertId")
def convert_id(ctx: Context, req: etree._Element) -> etree._Element:
    """Echo known item/folder ids in the requested format (ids are opaque either way); anything
    else is ErrorInvalidIdMalformed, which is what exchangelib's version probe ('DUMMY') gets."""
    dest = req.get("DestinationFormat", "EwsId")
    resp, messages = new_response("ConvertId")
    for alt in require(req, m("SourceIds")):
        if not isinstance(alt.tag, str):
            continue
        id_ = alt.get("Id") or ""
        if ctx.store.get_item(id_) is None and ctx.store.get_folder(id_) is None:
            error_message(messages, "ConvertId", EwsError("ErrorInvalidIdMalformed", "Id is malformed."))
            continue
        msg = ok_message(messages, "ConvertId")
        out = etree.SubElement(msg, m("AlternateId"), Format=dest, Id=id_)
        out.set("{http://www.w3.org/2001/XMLSchema-instance}type", "t:AlternateIdType")
        if alt.get("Mailbox"):
            out.set("Mailbox", alt.get("Mailbox"))
    return resp


@operation("ResolveNames")
def resolve_names(ctx: Context, req: etree._Element) -> etree._Element:
    """Resolve an address (or its prefix) against the emulator's mailboxes."""
    resp, messages = new_response("ResolveNames")
    entry = (req.findtext(m("UnresolvedEntry")) or "").strip().lower().removeprefix("smtp:")
    hits = sorted(a for a in known_mailboxes(ctx) if a.startswith(entry)) if entry else []
    if not hits:
        error_message(messages, "ResolveNames", EwsError("ErrorNameResolutionNoResults",
                                                         "No results were found."))
        return resp
    msg = ok_message(messages, "ResolveNames", "Success" if len(hits) == 1 else "Warning")
    rs = etree.SubElement(msg, m("ResolutionSet"), TotalItemsInView=str(len(hits)),
                          IncludesLastItemInRange="true")
    for address in hits:
        mb = etree.SubElement(etree.SubElement(rs, t("Resolution")), t("Mailbox"))
        etree.SubElement(mb, t("Name")).text = address.split("@")[0]
        etree.SubElement(mb, t("EmailAddress")).text = address
        etree.SubElement(mb, t("RoutingType")).text = "SMTP"
        etree.SubElement(mb, t("MailboxType")).text = "Mailbox"
    return resp
