"""ConvertId (exchangelib's version probe), ResolveNames, GetUserConfiguration, and the answers to
the contacts operations the emulator does not offer (FindPeople, GetPersona)."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from .folders import known_mailboxes, resolve_folder
from .registry import NS_M, NS_T, Context, EwsError, m, operation, t
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


@operation("GetUserConfiguration")
def get_user_configuration(ctx: Context, req: etree._Element) -> etree._Element:
    """The emulator keeps no user configurations (FAI items): every one asked for is missing, and
    Exchange answers a missing configuration with ErrorItemNotFound. The folder named in the
    request must exist (ErrorFolderNotFound otherwise)."""
    resp, messages = new_response("GetUserConfiguration")
    try:
        name = req.find(m("UserConfigurationName"))
        if name is None:
            name = require(req, t("UserConfigurationName"))
        resolve_folder(ctx, name)
        raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")
    except EwsError as e:
        if e.code == "ErrorSchemaValidation":
            raise
        error_message(messages, "GetUserConfiguration", e)
    return resp


def _unsupported(op: str, root_tag: str) -> Callable[[Context, etree._Element], etree._Element]:
    def handler(ctx: Context, req: etree._Element) -> etree._Element:
        # These two answer without a ResponseMessages list: FindPeopleResponse carries the
        # ResponseClass/ResponseCode itself, and GetPersona's body is a bare
        # GetPersonaResponseMessage (FindPeople / GetPersona operation references).
        out = etree.Element(m(root_tag), nsmap={"m": NS_M, "t": NS_T}, ResponseClass="Error")
        etree.SubElement(out, m("MessageText")).text = f"The {op} operation is not supported by this server."
        etree.SubElement(out, m("ResponseCode")).text = "ErrorInvalidOperation"
        etree.SubElement(out, m("DescriptiveLinkKey")).text = "0"
        return out

    handler.__name__ = op
    handler.__doc__ = (f"{op} (people/persona views over contacts) is not offered by the emulator: it answers with"
                       f" ErrorInvalidOperation, EWS's general error for a requested operation that is invalid"
                       f" here (ErrorInvalidRequest is for a request with an empty SOAP body).")
    return handler


operation("FindPeople")(_unsupported("FindPeople", "FindPeopleResponse"))
operation("GetPersona")(_unsupported("GetPersona", "GetPersonaResponseMessage"))
