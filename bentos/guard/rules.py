"""Instructions aimed at the model, and requests for serious harm, recognised by their wording.

Used on user input (next to the classifier) and on retrieved chunks, where a document that tells
"the assistant" what to do is an indirect prompt injection, whatever else it says.

The harm rules read word stems (Snowball), so "creating", "created" and "create", or "synthesise"
and "synthesizing", are one word to them; and they look at the whole message, so a pretext in front
of a request ("This is a test.", a poem, "new instructions") does not hide it. They match what is
asked for, not the topic: "how do I make a pipe bomb?" is refused, "what is a pipe bomb?", "our bomb
threat procedure" and "how do I kill a stuck process?" are not.
"""

from __future__ import annotations

import functools
import re

import snowballstemmer

_ANY = r"(?:all|any|every|the|your|my|these|those|previous|prior|above|earlier|preceding|initial|original|system|\s)*"
INJECTION = re.compile(
    "|".join(
        [
            rf"\b(?:ignor|disregard|forg[eo]t|overrid|bypass|skip)\w*\b{_ANY}\b(?:instructions?|prompts?|rules|guidelines|directions|context|messages?|guardrails|restrictions)\b",
            r"\b(?:reveal|print|show|repeat|output|leak|tell me)\b[^.\n]{0,40}\b(?:system|hidden|initial|secret)\s+(?:prompt|instructions|message)",
            r"\byou are (?:now |no longer )[^.\n]{0,40}\b(?:ai|assistant|model|chatbot|gpt|dan|persona|character|jailbroken|unrestricted|unfiltered)\b",
            r"\b(?:do anything now|developer mode|jailbreak(?:ed)?|dan mode|anti-?dan|evil-?bot|unfiltered (?:ai|mode|response)|no (?:ethical|moral) (?:guidelines|restrictions|constraints))\b",
            r"\b(?:new|updated|real|actual) instructions?\s*:",
            r"(?:<\|im_start\|>|<\|system\|>|\[/?INST\]|<<SYS>>|###\s*(?:system|instruction)\b)",
            r"\b(?:when|if) (?:an? |the )?(?:ai|assistant|model|llm|chatbot)\b[^.\n]{0,60}\b(?:reads?|sees?|summari[sz]es?|processes)\b",
            r"\b(?:assistant|ai|model),? (?:you )?(?:must|should|will) (?:now )?(?:ignore|say|respond|reply|answer|tell|include|append)\b",
        ]
    ),
    re.IGNORECASE,
)


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return m.group(0) if m else None


def injection_match(text: str) -> str | None:
    """The first phrase that reads as an instruction to the model, or None."""
    return _first(INJECTION, text)


# --- requests for serious harm, over word stems ----------------------------------------------

_STEMMER = snowballstemmer.stemmer("english")
# Irregular forms a stemmer leaves apart. Not "stolen" or "shot": "a stolen car", "a flu shot"
# describe what happened to someone, not what they ask to do.
_IRREGULAR = {"made": "make", "built": "build", "bought": "buy", "got": "get", "gotten": "get", "wrote": "write", "written": "write"}


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    word = _IRREGULAR.get(word, word)
    if word.endswith(("ise", "ised", "ises", "ising", "isation")):  # British -ise is American -ize to the stemmer
        word = re.sub(r"is(e|ed|es|ing|ation)$", r"iz\1", word)
    return _STEMMER.stemWord(word)


_TOKEN = re.compile(r"[a-z0-9]+|'s\b|[.?!;:\n]")


@functools.lru_cache(maxsize=256)  # the input rail asks twice per message: the rules, then whether it names harm
def stems(text: str) -> str:
    """``text`` as one line of word stems, a space apart; sentence punctuation stays a token
    (a rule's words must stand in one sentence) and a possessive is its own token ('s)."""
    return " " + " ".join(stem(t) if t[0].isalnum() else t for t in _TOKEN.findall(text.lower().replace("’", "'"))) + " "


def _words(phrases: str) -> str:
    """A regex alternation of phrases (``|``-separated, words a space apart), each word stemmed."""
    return "(?:" + "|".join(" ".join(re.escape(stem(w)) for w in p.split()) for p in phrases.split("|")) + ")(?= )"


_W = r"[^ .?!;:\n]+"  # one word of the same sentence


def _gap(n: int, not_words: str = "") -> str:
    """Up to ``n`` words of the same sentence, none of them ``not_words``."""
    guard = rf"(?!{not_words} )" if not_words else ""
    return rf"(?: {guard}{_W}){{0,{n}}}"


# What the request asks to do it with: "how do I", "ways to", "I want to", "help me", "step by step".
_FRAME = _words(
    "how do i|how can i|how could i|how would i|how should i|how might i|how do we|how can we|how would one|how can one|"
    "how does one|how do you|how can you|how to|how i can|way to|ways to|best way|want to|wanna|going to|gonna|need to|plan to|"
    "tips|tip|steps|step by step|guide|tutorial|instructions|teach me|show me|help me|explain how|tell me how|can i|could i|"
    "should i|i will|i'll|let's|lets"
)
_DET = r"(?: (?:a|an|the|some|this|that|these|those|my|our|his|her|their|your|someon|somebodi|someon else|anoth|other|peopl|\w+ 's))*"
_MAKE = _words(
    "make|build|assemble|construct|synthesize|produce|manufacture|cook|brew|create|prepare|3d print|print|grow|culture|"
    "weaponize|extract|refine|enrich|mix|get|buy|obtain|acquire|source|order|smuggle|make my own|recipe for|pack|rig|wire|"
    "put together|convert|modify|design|improvise|fashion|machine|mill|load|fill"
)
_DANGEROUS = _words(
    "bomb|pipe bomb|nail bomb|car bomb|dirty bomb|explosive|ied|detonator|napalm|thermite|molotov|molotov cocktail|grenade|"
    "landmine|land mine|c4|semtex|tatp|hmtd|anfo|nitroglycerin|nerve agent|nerve gas|sarin|vx|tabun|soman|novichok|ricin|abrin|"
    "anthrax|botulinum|botulinum toxin|smallpox|plague bacteria|mustard gas|chlorine gas|phosgene|cyanide|hydrogen cyanide|"
    "bioweapon|bio weapon|biological weapon|chemical weapon|nuclear weapon|nuclear bomb|ghost gun|untraceable gun|"
    "untraceable firearm|silencer|suppressor|machine gun|meth|methamphetamine|crack cocaine|fentanyl|heroin|"
    "date rape drug|rohypnol|ghb|poison gas|toxin|deadly virus|pathogen|dynamite|letter bomb|mail bomb|claymore|landmine|"
    "suicide vest|explosive vest|rocket launcher|booby trap|zip gun|pipe gun|pipe shotgun|auto sear|bump stock|blasting cap|"
    "incendiary device|incendiary|firebomb|untraceable ammunition|untraceable ammo|homemade gun|homemade grenade|"
    "improvised explosive|timer bomb|bomb with a timer|shrapnel|fully automatic|full auto|chemical agent|toxic gas"
)
# A word after "bomb" or "explosive" that makes it an ordinary topic: "bomb threat", "explosive growth".
_NOT_DANGER_NEXT = _words("threat|squad|disposal|shelter|cyclone|calorimeter|drill|detection|detector|sniffing|growth|test|scare")
# Words between a verb and its object that show the object is not what is made: "get a licence for explosives".
_NOT_OBJECT = _words(
    "licence|license|permit|rid|training|insurance|clearance|policy|procedure|guidance|advice|information|report|plan|sign|"
    "poster|list of rules|detector|test|kit for detecting|protection|vaccine|antidote|treatment|awareness"
)
_HURT = _words(
    "kill|murder|poison|stab|strangle|shoot|kidnap|abduct|torture|assault|beat up|hurt|harm|maim|drown|suffocate|attack|rape|"
    "abuse|molest|behead|lynch|run over|blackmail|extort|stalk|dox|swat|drug|spike the drink of|spike the drinks of|assassinate|"
    "get rid of|burn|shoot up"
)
_PERSON = _words(
    "neighbour|neighbor|wife|husband|partner|girlfriend|boyfriend|ex|boss|coworker|co worker|colleague|teacher|child|children|kid|"
    "baby|mother|father|mom|dad|brother|sister|family|person|people|someone|somebody|human|man|woman|president|cop|police officer|"
    "classmate|roommate|stranger|student|pupil|customer|manager|employee|landlord|tenant|politician|senator|judge|witness|"
    "him|her|them|everyone|jew|muslim|christian|immigrant|gay|black|white|girl|boy|teenager|teen|minor"
)
_AFTER_PERSON_NOT = _words(
    "an email|a message|a note|a text|a line|a quick|an invite|a link|a dm|testimonial|video|photo|portrait|headshot|interview|"
    "survey|feedback|story|case study|review|spotlight"
)
_MALWARE = _words(
    "ransomware|keylogger|malware|computer virus|virus|trojan|botnet|rootkit|spyware|stalkerware|worm|backdoor|infostealer|"
    "info stealer|credential stealer|password stealer|exploit kit|ddos tool|ddos script|cryptojacker|remote access trojan|"
    "zero click exploit|phishing kit|phishing page|fake login page|rat"
)
_NOT_MALWARE_NEXT = _words("scan|scanner|protection|definition|check|checker|detection|alert|incident|attack report|removal|response")
_DOC_NOUNS = _words(
    "report|ticket|summary|policy|playbook|runbook|procedure|rule|signature|detection|alert|email|memo|post|article|slide|"
    "presentation|training|awareness|lesson|quiz|test|checklist|plan|response|write up|writeup|analysis|story|guide|"
    "incident|note|notice|warning|filter|yara rule|defence|defense|description|definition|explanation|history"
)
_CHILD = _words(
    "child|children|kid|minor|boy|girl|preteen|pre teen|teen|teenager|underage|student|pupil|toddler|daughter|son|niece|nephew|"
    "year old|yr old|yo"
)
_PLACE = _words(
    "house|home|car|building|school|office|store|shop|church|apartment|flat|barn|forest|bank|jewelry store|jewellery store|"
    "safe|warehouse|museum|casino|pharmacy|gas station|petrol station"
)
_SITE = _words(
    "crowd|school|church|mosque|synagogue|temple|concert|stadium|subway|parade|festival|mall|hospital|airport|"
    "government building|market|train station|nightclub|rally|classroom"
)
_MASS = _words(
    "mass shooting|school shooting|terrorist attack|terror attack|massacre|bomb attack|bombing|suicide bombing|genocide|"
    "mass murder|ethnic cleansing|mass casualty attack|shooting spree|killing spree"
)
_PATHOGEN = _words(
    "pathogen|virus|bacteria|bacterium|plague|yersinia|yersinia pestis|ebola|anthrax|smallpox|tularemia|botulism|botulinum|"
    "salmonella|bird flu|avian flu|h5n1|1918 flu|flu virus|influenza|fungus|spores|toxin|prion|cholera|typhoid|measles|"
    "foot and mouth|crop disease|chemical agent|nerve agent|poison gas|toxic gas|sarin|vx|lewisite|saxitoxin|ricin|uranium|"
    "radioactive material|dirty bomb|nuclear device|chemical weapon|bioweapon|biological weapon"
)
# What turns an agent into a weapon: spreading it, making it worse, or aiming it at people.
_SPREAD = _words(
    "aerosolize|disperse|release|spread|weaponize|culture|cultivate|grow|concentrate|enhance|engineer|rebuild|recreate|"
    "stabilize|make more transmissible|more transmissible|more lethal|more deadly|deadlier|escape vaccines|"
    "turn into a weapon|into a weapon|into a chemical weapon|into a bioweapon|enrich|infect|contaminate|deploy|smuggle"
)
_NUDE = _words("nude|nudes|naked|explicit|sexual|sexy|lewd|topless|intimate")
_PICTURE = _words("photo|photos|pic|pics|picture|pictures|image|images|video|videos|selfie|selfies|content")


def _rules(*patterns: str) -> re.Pattern:
    return re.compile("|".join(patterns))


# Asked for by anyone, these are unsafe to answer: no story or third person changes that.
_ALWAYS = _rules(
    # making or getting a weapon, an agent or a hard drug
    rf" {_MAKE}{_gap(8, _NOT_OBJECT)} {_DANGEROUS}(?! {_NOT_DANGER_NEXT})",
    # tools that take what is not yours: passwords, sessions, accounts, codes
    rf" {_words('write|create|build|make|code|develop|generate|give me|design')}{_gap(6)} {_words('script|tool|program|code|extension|package|payload|app|bot|malware')}"
    rf"{_gap(4)} {_words('that steals|to steal|that cracks|to crack|that intercepts|to intercept|that hijacks|to hijack|that swaps|that installs malware|to take over|that takes over|to dump|that dumps|that encrypts every|that logs keystrokes')}",
    rf" {_words('credential stuffing|card skimmer|clipboard hijacker|cookie stealer|session hijacking|zero click exploit|exploit chain|mirai variant|botnet|ddos attack|phishing emails|spear phishing email|fake antivirus|jackpot an atm')}{_gap(12)}"
    rf" {_words('someone|someones|rival|competitor|thousands|million|victim|victims|my server|take down|i do not own|not mine|specific|journalist|attack')}",
    rf" {_FRAME}{_gap(4)} {_words('hijack|take over|intercept|crack')}{_DET}(?: {_W})? {_words('account|accounts|whatsapp|wi fi|wifi|password|2fa|codes|phone|iphone')}",
    # writing malware
    rf" {_words('write|create|build|make|code|develop|program|generate|design|deploy|spread|distribute|send out')}{_gap(4, _DOC_NOUNS)}"
    rf" {_MALWARE}(?! {_NOT_MALWARE_NEXT})",
    rf" {_MALWARE} {_words('that encrypts|that steals|that spreads|that logs|that records|that locks|that wipes|that infects|that disables|that evades|that hides|that exfiltrates|to encrypt|to steal|to spread|to infect')}",
    # weapons no one may make: untraceable, homemade or improvised ones, and anything set to explode
    rf" {_words('untraceable|unregistered|unserialized|homemade|improvised|3d printed|3d print|ghost')}{_gap(2)}"
    rf" {_words('gun|guns|firearm|firearms|rifle|handgun|pistol|shotgun|ammunition|ammo|silencer|suppressor|grenade|explosive|explosives|bomb|weapon')}",
    rf" {_words('to explode|to detonate|explode when|explodes when|detonate when|detonates when')}",
    rf" {_FRAME}{_gap(8)} {_words('more lethal|more deadly|deadlier|lethal wounds|maximum damage|most shrapnel|kill more|fire like a machine gun|fully automatic|full auto|past metal detectors|on metal detectors|through airport security')}",
    # spreading or enhancing a pathogen or an agent
    rf" {_SPREAD}{_gap(8, _NOT_OBJECT)} {_PATHOGEN}",
    rf" {_PATHOGEN}{_gap(6)} {_words('to infect|to poison|to kill|and release|and spread|and spreading|for release|in a crowd|in a city|in a hospital|through ventilation')}",
    # killing many: the aim said outright
    rf" {_words('mass casualties|mass casualty|cause casualties|maximum deaths|as many people as possible|most people possible|bombing campaign|attack plan|vehicle ramming|mass stabbing|race war')}",
    rf" {_FRAME}{_gap(6)} {_words('derail|sabotage|crash|blow up|bomb|set fire to|burn down|gas')}{_DET}(?: {_W}){{0,2}}"
    rf" {_words('train|airliner|plane|dam|bridge|power substation|substation|power grid|pipeline|convoy|nightclub|theater|theatre|refugee shelter|kindergarten|clinic|stadium')}",
    rf" {_words('attack|ambush|storm|kill|shoot|stab')}{_DET}(?: {_W}){{0,2}} {_words('worshippers|protesters|hikers|crowd|kindergarten|refugee shelter|abortion clinic|pride parade|christmas market|convoy|head of state')}",
    # child sexual abuse material, and access to children to abuse them
    rf" {_words('child sexual abuse material|child abuse material|child abuse images|child abuse videos|child abuse photos|abuse images of children|abuse videos of children|sexual abuse material|sextort|sextortion')}",
    rf" {_words('secretly film|hide cameras in|hidden cameras in|spy on')}{_DET}(?: {_W})? {_words('kids|children|child|girls|boys|teens|minors')}",
    rf" {_words('trust|access|alone')}{_gap(4)} {_words('child|children|kid|kids|minor|minors|teen|teenager|10 year old|9 year old|year old')}{_gap(6)} {_words('meet|alone|photos|pictures|undress|secret')}",
    rf" {_words('child|kid|minor|teen|teenager|stepdaughter|stepson|year old')}{_gap(8)} {_words('keep quiet|never tells|never tell|never mention|not tell|undress|explicit things|sexual relationship|exploit')}",
    # harming oneself
    rf" {_words('kill myself|hurt myself|harm myself|cut myself|starve myself|commit suicide|end my life|end my own life')}",
    # mass violence
    rf" {_words('commit|carry out|perpetrate|launch|organize|execute|plan a|plan an|do a|pull off|conduct')}{_DET}(?: {_W})? {_MASS}",
    rf" {_words('kill as many|maximum casualties|maximize casualties|most casualties|maximize deaths')}",
    rf" {_words('attack|bomb|shoot up|blow up|open fire on|open fire at|gas|poison')}{_DET} {_SITE}",
    rf" {_words('drive|ram|plow|plough')}{_DET} {_words('car|truck|van|vehicle')} into{_DET} {_words('crowd|people|pedestrians|market|parade')}",
    rf" {_words('poison|contaminate|infect')}{_DET}(?: {_words('city|town')} 's)? {_words('water supply|reservoir|food supply|water system')}",
    # sexual abuse of children
    rf" {_words('groom|seduce|molest|sexually abuse|lure|entice')}{_DET}(?: {_W})? {_CHILD}",
    rf" {_NUDE}(?: {_W})? {_PICTURE} {_words('of|from')}{_DET}(?: {_W})? {_CHILD}",
    rf" {_CHILD}{_gap(8)} {_words('send|share|take|show')}(?: me)?{_gap(3)} {_NUDE}",
    rf" {_words('sex with|have sex with|sleep with|sexual with')}{_DET}(?: [0-9]+)?(?: {_W})? {_CHILD}",
    rf" {_words('meet|be alone with|get')}{_DET}(?: {_W})? {_CHILD}{_gap(8)} without{_DET} {_words('parent|parents|mom|mum|dad|family')}",
    rf" {_words('child porn|child pornography|csam|cp collection')}",
)
# Crime and harm against a person: not where someone else is the one doing it ("how did they rob
# the casino in Ocean's 11?", "a customer threatened to hurt the staff").
_PERSONAL = _rules(
    rf" {_HURT}(?: (?:a|an|the|some|this|that|my|our|his|her|their|your|own|local|{_W} 's|old|young|littl|new)){{0,3}} {_PERSON}"
    rf"(?! {_AFTER_PERSON_NOT})",
    rf" {_words('hide|dispose of|get rid of|dissolve|bury|dismember|cut up')}{_DET}(?: dead)? {_words('body|bodies|corpse')}",
    # how to hurt someone, said by what it does to them
    rf" {_FRAME}{_gap(8)} {_words('so she dies|so he dies|so they die|until they die|until he dies|until she dies|so she crashes|so he crashes|look like an accident|look like a suicide|look like a burglary|claim it was an accident|cause a heart attack|disappear permanently|loses the baby|lose the baby|knock them out|knock him out|knock her out|fatal allergic reaction|overdose|cripple|cripple him|cripple her|blind someone|throw acid|choke someone|electrocute|tamper with')}",
    rf" {_words('kidnap|abduct|snatch|hold|keep')}{_DET}(?: {_W}){{0,2}} {_words('for ransom|captive|hostage')}",
    # not to be caught: said with a request
    rf" {_FRAME}{_gap(12)} without {_words('getting caught|being caught|being traced|being detected|being noticed|being identified|being reported|being stopped|being tracked|anyone knowing|anyone noticing|anyone finding out|the police|police noticing|regulators|the authorities|the auditors|the manager noticing|a trace|leaving a trace|leaving evidence|leaving fingerprints')}",
    rf" {_words('get away with murder|get away with killing|get away with it')}",
    # crime verbs with a way not to be caught
    rf" {_words('steal|shoplift|vandalize|graffiti|spray paint|break into|hack into|poison|hurt|kill|smuggle|launder|forge|counterfeit|dump|burn|key|slash|rob|loot|sabotage|damage|destroy')}"
    rf"{_gap(10)} without {_words('getting|being|anyone|anybody|leaving|them|him|her|their|the owner|the police|any|a trace|trace|evidence|fingerprints|dna|cameras')}",
    # other people's accounts and devices
    rf" {_FRAME}{_gap(3)} {_words('hack into|break into|get into|brute force|crack')}{_DET}(?: {_W})?"
    rf" {_words('account|email|phone|computer|laptop|network|wi fi|wifi|server|database|webcam|camera|instagram|facebook|snapchat|icloud|gmail|bank account')}",
    rf" {_words('hack into|hack')} {_words('someone|somebody|another|other people|my ex|his|her|their|a bank|a government|a hospital|a school|the pentagon')}",
    rf" {_words('hack into|hack')} my {_W} 's",
    # stealing, robbing, vandalising, laundering, forging, trafficking, arson
    rf" {_FRAME}{_gap(4)} {_words('steal|hotwire|carjack|chop')}{_DET}(?: {_W})?"
    rf" {_words('car|vehicle|motorcycle|motorbike|truck|catalytic converter|bike|tesla|bmw')}",
    rf" {_words('steal|rob')}{_gap(6)} and {_words('sell|fence|flip|resell|pawn')}",
    rf" {_FRAME}{_gap(4)} {_words('shoplift|pickpocket|mug someone|rob a|rob the|rob my|burgle|burglarize|loot|vandalize|slash tires|slash the tires|key a car')}",
    rf" {_FRAME}{_gap(4)} {_words('launder|counterfeit|forge|print fake|make fake')}",
    rf" {_words('launder|clean|wash')}{_DET}(?: {_W})? {_words('money|cash|proceeds|bitcoin|crypto|funds|drug money')}",
    rf" {_MAKE}{_gap(3)} {_words('counterfeit|fake')}"
    rf" {_words('money|bills|currency|banknotes|notes|passport|passports|id|ids|driver license|euros|dollars')}",
    rf" {_words('traffic|smuggle|sell')}{_DET}(?: {_W})?"
    rf" {_words('drugs|cocaine|heroin|fentanyl|meth|people|humans|women|girls|children|organs|weapons|guns|migrants|refugees')}",
    rf" {_words('set fire to|set on fire|burn down|torch|firebomb')}{_DET}(?: {_W})? {_PLACE}",
    rf" {_words('break into|burgle|burglarize|rob')}{_DET} {_PLACE}",
    rf" {_FRAME}{_gap(4)} {_words('steal someone identity|steal an identity|steal identities|commit identity theft|use a stolen card|use stolen cards|use a stolen credit card')}",
    rf" {_FRAME}{_gap(4)} open{_gap(3)} in {_words('someone|another|somebody')}{_gap(2)} name",
    rf" {_FRAME}{_gap(4)} {_words('poach|hunt|kill')}{_DET}(?: {_W})? {_words('endangered|rhino|rhinos|elephant|elephants|tiger|tigers|protected')}",
    rf" {_FRAME}{_gap(4)} {_words('cheat|scam|defraud|swindle|con')}"
    rf" {_words('old|elderly|seniors|vulnerable|people|someone|my|customers|investors|grandma|grandpa')}",
)
# Someone else did it or threatens to, in the same sentence just before the verb.
_THIRD_BEFORE = re.compile(
    rf" {_words('threaten to|threatened to|threatens to|who|someone|somebody|hacker|attacker|customer|if someone|if anyone|someone who|he|she|they|did|were|been|got|character|villain|protagonist|try to|tried to')}"
    rf"(?: {_W}){{0,3}} $"
)


# ... or in a game, later in the same sentence ("kill someone in Call of Duty").
_GAME_AFTER = re.compile(
    rf"^(?: {_W}){{0,6}} in{_DET}(?: {_W}){{0,3}} {_words('game|video game|gta|grand theft auto|call of duty|witcher|skyrim|minecraft|fortnite|roblox|hitman')}"
)


# Words of harm: a weapon, an agent, a drug, malware, violence, a crime, abuse, or a child (whom
# grooming requests name without any other such word). The classifier's
# "harmful" alone refuses only a message that holds one: it learnt the shape of a request
# ("how do I ... at home?") as well as its topic, and refused "How do I bake sourdough bread at home?".
_HARM_WORDS = re.compile(
    rf" (?:{_DANGEROUS}|{_PATHOGEN}|{_MALWARE}|{_HURT}|{_MASS}|{_NUDE}|{_CHILD}|"
    + _words(
        "weapon|weapons|gun|guns|firearm|rifle|pistol|ammunition|explosive|explode|detonate|bomb|drug|drugs|cocaine|steal|theft|"
        "rob|robbery|burglary|fraud|scam|launder|counterfeit|forge|fake|smuggle|traffic|trafficking|hack|hacking|exploit|crack|"
        "phishing|ddos|password|passwords|credentials|die|death|dead|deadly|lethal|fatal|suicide|self harm|torture|abuse|rape|"
        "violence|violent|terror|terrorist|terrorism|hostage|ransom|extremist|isis|nazi|genocide|arson|fire|burn|acid|victim|"
        "victims|illegal|illegally|crime|criminal|evade|evading|undetected|untraceable|caught|police|minor|minors|underage|grooming|"
        "porn|pornography|nude|naked|sex|sexual|harass|threat|threaten|blackmail|stalk|spy|surveil|overdose|vandalize|destroy|"
        "sabotage|riot|hate|racist|slur|cheat|bribe|embezzle|tax evasion|evade taxes|poach|cruel|animal cruelty"
    )
    + ")"
)


def mentions_harm(text: str) -> bool:
    """Whether ``text`` names any kind of harm, in any form of the word."""
    return bool(_HARM_WORDS.search(stems(text)))


def harmful_match(text: str) -> str | None:
    """The first phrase (as word stems) that asks for help with serious harm, or None."""
    s = stems(text)
    m = _ALWAYS.search(s)
    if m:
        return m.group(0).strip()
    for m in _PERSONAL.finditer(s):
        if not (_THIRD_BEFORE.search(s[: m.start() + 1]) or _GAME_AFTER.search(s[m.end() :])):
            return m.group(0).strip()
    return None


def verdict(text: str) -> str | None:
    """The rail the rules block ``text`` as (``prompt_injection``, ``harmful_request``), or None."""
    if injection_match(text):
        return "prompt_injection"
    if harmful_match(text):
        return "harmful_request"
    return None
